"""Calibration: the representative samples (shared by every int8 kind), and the activation ranges computed from
them for the kinds whose quantizer takes ranges (ONNX Runtime's)."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm


from calibration import CalibrationMethod, CalibrationRanges, WeightRounding, calibrate
from calibration.methods import candidate_ranges
from calibration.runs import output_sqnr_db
from calibration.tuning import CannotTune, not_tuned, tune_weights
from calibration.weights import ChosenWeights, apply_weights, choose_weights, weights_kept

from ..allocator import release
from ..data.datasets import BATCH
from ..profile import Int8Granularity, Int8Scheme


def samples_step(plan) -> dict:
    """``num_samples`` training images picked with ``seed``, raw and as the model's preprocessed input."""
    options = plan.config.calibration

    def produce(tmp: Path) -> dict:
        subset, spec = plan.data.train.take(options.num_samples, options.seed), plan.preprocess()
        height, width, channels = plan.data.image_shape
        # Written batch by batch into .npy files mapped from disk; readers map them too.
        images = open_memmap(tmp / "images.npy", "w+", np.float32, (len(subset), height, width, channels))
        inputs = open_memmap(tmp / "inputs.npy", "w+", np.float32, (len(subset), channels, height, width))
        start = 0
        for batch, _ in tqdm(subset.batches(), "calibration samples", -(-len(subset) // BATCH), unit="batch",
                             delay=2.0, leave=False):
            images[start : start + len(batch)], inputs[start : start + len(batch)] = batch, spec.apply(batch)
            start += len(batch)
        images.flush()
        inputs.flush()
        few = plan.task_row.few_calibration_images
        if len(subset) < few:
            plan.engine.log(f"[warn] int8 calibration of a {plan.task.value} model on {len(subset)} images: fewer than "
                            f"{few} can lose accuracy (YOLO11n's TensorRT int8 on 4 images fell from 0.608 to 0.318 "
                            "mAP50-95); give more training images or --calibration-samples")
        return {"files": {"inputs": "inputs.npy", "images": "images.npy"}, "num_samples": len(subset)}

    params = {"num_samples": options.num_samples, "seed": options.seed}  # the data: through the model record
    return plan.shared_step("calibration-samples", "quantize", params, [plan.model_record], produce)


def ranges_step(plan, export: dict, scheme: Int8Scheme) -> dict:
    """The activation ranges of the exported graph over the samples, by the configured method. AUTO computes every
    method's ranges on three quarters of the samples and keeps the one whose int8 model (in ``scheme``) is closest
    to the float model on the last quarter, by output SQNR."""
    options = plan.config.calibration
    samples = samples_step(plan)
    auto = options.method is CalibrationMethod.AUTO

    def produce(tmp: Path) -> dict:
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")  # read a chunk at a time
        chosen = {}
        if auto:
            held_out = max(1, len(inputs) // 4)
            candidates = candidate_ranges(plan.path(export, "onnx"), "input", inputs[:-held_out], options)
            scores = [judge_ranges(plan.path(export, "onnx"), c, inputs[-held_out:], scheme, tmp) for c in candidates]
            ranges = candidates[int(np.argmax(scores))]
            chosen = {"chosen": ranges.label, "held_out": held_out,
                      "candidates": [{"ranges": c.label, "sqnr_db": s} for c, s in zip(candidates, scores)]}
        else:
            ranges = calibrate(plan.path(export, "onnx"), "input", inputs, options)
        ranges.save(tmp / "ranges.json")
        return {"files": {"ranges": "ranges.json"}, "method": options.method.value, "label": ranges.label,
                "num_samples": ranges.num_samples, "tensors": len(ranges.ranges), **chosen}

    params = {k: v for k, v in asdict(options).items()
              if k not in ("num_samples", "seed", "weight_rounding", "tuning_steps")}
    params["method"] = options.method.value
    variant = plan.variant(export)
    judged_in = f"-{scheme.granularity.value}-{'sym' if scheme.activation_symmetric else 'asym'}" if auto else ""
    if auto:
        params["scheme"] = judged_in
    return plan.shared_step(f"calibrate-opset{export['data']['opset']}{variant}-{options.method.value}{judged_in}",
                            "quantize", params, [export, samples], produce)


def judge_ranges(model_path: Path, ranges: CalibrationRanges, inputs: np.ndarray, scheme: Int8Scheme,
                 workdir: Path) -> float:
    """Output SQNR (dB) of the model quantized with ``ranges`` against the float model, on ``inputs``."""
    from ..formats.onnx_int8 import quantize_int8

    candidate = workdir / "candidate_int8.onnx"
    quantize_int8(model_path, ranges, candidate, scheme)
    sqnr = output_sqnr_db(model_path, candidate, inputs)
    candidate.unlink()
    return sqnr


def weights_step(plan, export: dict, key: str, granularity: Int8Granularity) -> dict:
    """The exported float model with its int8 weights chosen layer by layer on the calibration samples (GPTQ rounding
    and bias correction), each on the grid the converters compute for ``granularity``, so that every int8 kind
    carries the same choice."""
    samples = samples_step(plan)
    variant = f"{WeightRounding.GPTQ.value}-{granularity.value}"

    def produce(tmp: Path) -> dict:
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")
        chosen, layers = choose_weights(plan.path(export, key), "input", inputs, granularity)
        chosen.save(tmp / "chosen_weights.npz")
        apply_weights(plan.path(export, key), chosen, tmp / "model_int8_grid.onnx")
        return {"files": {"onnx": "model_int8_grid.onnx", "chosen": "chosen_weights.npz"},
                "opset": export["data"]["opset"], "variant": variant, "layers": layers,
                "num_samples": chosen.num_samples}

    params = {"weight_rounding": WeightRounding.GPTQ.value, "granularity": granularity.value}
    return plan.shared_step(f"weights-opset{export['data']['opset']}-{variant}", "quantize", params,
                            [export, samples], produce)


def tuning_step(plan, export: dict, key: str, model: dict, ranges: dict, scheme: Int8Scheme) -> dict:
    """``model`` (GPTQ's weights) trained through the rounding of its int8 model (``ranges``, ``scheme``) until its
    outputs match the export's on the calibration samples: quantization-aware tuning. Its weights stay on the
    converters' grid, so every int8 kind carries them; where tuning does not beat GPTQ's weights on the held-out
    samples, those are kept."""
    from ..formats.onnx_int8 import quantize_int8

    options = plan.config.calibration
    samples = samples_step(plan)
    variant = f"{WeightRounding.TUNED.value}-{scheme.granularity.value}"

    def produce(tmp: Path) -> dict:
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")
        rounding = tmp / "rounding_int8.onnx"
        quantize_int8(plan.path(model, "onnx"), CalibrationRanges.load(plan.path(ranges, "ranges")), rounding, scheme)
        try:
            result = tune_weights(plan.path(export, key), plan.path(model, "onnx"), rounding, inputs,
                                  options.tuning_steps, scheme.granularity, options.seed, after_step=release)
            record, chosen = result.to_json(), result.chosen
        except CannotTune as reason:
            record, chosen = not_tuned(reason), None
        rounding.unlink()
        if chosen is None:
            shutil.copyfile(plan.path(model, "onnx"), tmp / "model_int8_grid.onnx")
            shutil.copyfile(plan.path(model, "chosen"), tmp / "chosen_weights.npz")
        else:
            chosen.save(tmp / "chosen_weights.npz")
            apply_weights(plan.path(model, "onnx"), chosen, tmp / "model_int8_grid.onnx")
        return {"files": {"onnx": "model_int8_grid.onnx", "chosen": "chosen_weights.npz"},
                "opset": model["data"]["opset"], "variant": variant, "layers": model["data"]["layers"],
                "num_samples": len(inputs), "tuning": record}

    params = {"weight_rounding": WeightRounding.TUNED.value, "steps": options.tuning_steps,
              "symmetric": scheme.activation_symmetric}
    # tuned through symmetric activations (TensorRT's) the weights differ from the asymmetric boards' ones
    name = f"weights-opset{model['data']['opset']}-{variant}" + ("-sym" if scheme.activation_symmetric else "")
    return plan.shared_step(name, "quantize", params, [export, model, samples, ranges], produce)


def weights_note(plan, model: dict, found: list[np.ndarray], layout: str) -> tuple[str, tuple[int, int]]:
    """What the calibration note of an int8 kind made from ``model`` says about its weights, and (layers whose
    chosen int8 weights are among ``found`` exactly, layers chosen)."""
    if "chosen" not in model["files"]:
        return "weights rounded to nearest by the converter", (0, 0)
    kept = weights_kept(ChosenWeights.load(plan.path(model, "chosen")), found, layout)
    data = model["data"]
    how = f"weights chosen by {data['variant']} rounding with bias correction"
    if "tuning" in data:
        tuning = data["tuning"]
        if "skipped" in tuning:
            outcome = f"not run: {tuning['skipped']}"
        elif tuning["kept"]:
            outcome = (f"{tuning['start_sqnr_db']:.1f} -> {tuning['best_sqnr_db']:.1f} dB on {tuning['held_out']} "
                       f"held-out samples, step {tuning['best_step']} of {tuning['steps']}")
        else:
            outcome = (f"not kept: no gain over {tuning['start_sqnr_db']:.1f} dB on {tuning['held_out']} held-out "
                       f"samples in {tuning['steps']} steps")
        how = f"weights chosen by GPTQ rounding with bias correction, then quantization-aware tuning ({outcome})"
    return f"{how} on {data['num_samples']} samples, kept bit-exactly in {kept[0]}/{kept[1]} layers", kept
