"""Calibration: the representative samples (shared by every int8 kind), and the activation ranges computed from
them for the kinds whose quantizer takes ranges (ONNX Runtime's)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from ..calibration import CalibrationMethod, CalibrationRanges, calibrate
from ..calibration.methods import candidate_ranges
from ..calibration.runs import output_sqnr_db
from ..calibration.weights import ChosenWeights, apply_weights, choose_weights, weights_kept
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

    params = {k: v for k, v in asdict(options).items() if k not in ("num_samples", "seed", "weight_rounding")}
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
    """The exported float model with its int8 weights chosen on the calibration samples (``weight_rounding``), each
    on the grid the converters compute for ``granularity``, so that every int8 kind carries the same choice."""
    options = plan.config.calibration
    samples = samples_step(plan)
    variant = f"{options.weight_rounding.value}-{granularity.value}"

    def produce(tmp: Path) -> dict:
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")
        chosen, layers = choose_weights(plan.path(export, key), "input", inputs,
                                        per_channel=granularity is Int8Granularity.PER_CHANNEL)
        chosen.save(tmp / "chosen_weights.npz")
        apply_weights(plan.path(export, key), chosen, tmp / "model_int8_grid.onnx")
        return {"files": {"onnx": "model_int8_grid.onnx", "chosen": "chosen_weights.npz"},
                "opset": export["data"]["opset"], "variant": variant, "layers": layers,
                "num_samples": chosen.num_samples}

    params = {"weight_rounding": options.weight_rounding.value, "granularity": granularity.value}
    return plan.shared_step(f"weights-opset{export['data']['opset']}-{variant}", "quantize", params,
                            [export, samples], produce)


def weights_note(plan, model: dict, found: list[np.ndarray], layout: str) -> tuple[str, tuple[int, int]]:
    """What the calibration note of an int8 kind made from ``model`` says about its weights, and (layers whose
    chosen int8 weights are among ``found`` exactly, layers chosen)."""
    if "chosen" not in model["files"]:
        return "weights rounded to nearest by the converter", (0, 0)
    kept = weights_kept(ChosenWeights.load(plan.path(model, "chosen")), found, layout)
    data = model["data"]
    return (f"weights chosen by {data['variant']} rounding with bias correction on {data['num_samples']} samples, "
            f"kept bit-exactly in {kept[0]}/{kept[1]} layers"), kept
