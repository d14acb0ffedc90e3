"""Running a float or int8 ONNX or TFLite model on calibration samples: the sessions and the SQNR the calibration
and checking modules share."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def sqnr_db(signal: float, noise: float) -> float:
    return float("inf") if noise <= 0 else float(10 * np.log10(signal / noise))


def ort_session(model, single_thread: bool = False, unfused: bool = False):
    """An ONNX Runtime CPU session of ``model`` (a path or a ModelProto), quiet; ``single_thread`` for latency.

    ``unfused``: no graph optimisation, so every intermediate tensor is kept, and a QDQ model runs its int8 arithmetic
    exactly (dequantize, the float op, quantize) instead of in this host's fused int8 kernels, which is what the
    calibration modules judge by: on x86 without VNNI those kernels add pairs of uint8 x int8 products in 16 bits,
    which saturate (EfficientNet-Lite1's per-channel int8 model: 6.0 dB of logit SQNR fused, 15.8 dB exact, on an
    AVX2-only AMD EPYC), while the boards' int8 kernels (ARM's dot products, VNNI) are exact."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if single_thread:
        options.intra_op_num_threads = options.inter_op_num_threads = 1
    if unfused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def tflite_interpreter(path: Path, keep_all: bool = True):
    """A LiteRT interpreter of ``path`` without default delegates (XNNPACK would fuse and drop tensors); ``keep_all``
    keeps every intermediate tensor readable after ``invoke``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=keep_all,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def feed_tflite(interpreter, sample_nchw: np.ndarray, nhwc: bool) -> None:
    """Run one NCHW sample (NHWC where the file takes it); an integer input is quantized as the board's runner does."""
    detail = interpreter.get_input_details()[0]
    x = sample_nchw[None].transpose(0, 2, 3, 1) if nhwc else sample_nchw[None]
    scale, zero = detail["quantization"]
    if scale:
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max)
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=detail["dtype"]))
    interpreter.invoke()


def with_outputs(model, names: list[str]):
    """``model`` (a ModelProto, changed in place) with ``names`` added to its graph outputs, as float tensors."""
    import onnx

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def output_sqnr_db(reference_path: Path, other_path: Path, inputs: np.ndarray, input_name: str = "input") -> float:
    """SQNR (dB) of ``other_path``'s outputs against ``reference_path``'s, over ``inputs`` one at a time (int8
    arithmetic exact: unfused): the worst output's, so that a detector's boxes and scores are each judged alone
    (a classifier's one output is its logits)."""
    sessions = [ort_session(p, unfused=True) for p in (reference_path, other_path)]
    signal = noise = 0.0
    for x in inputs:
        feed = {input_name: np.array(x[None], np.float32)}
        reference, other = ([o.astype(np.float64) for o in s.run(None, feed)] for s in sessions)
        signal = signal + np.asarray([np.square(r).sum() for r in reference])
        noise = noise + np.asarray([np.square(r - o).sum() for r, o in zip(reference, other)])
    return min(sqnr_db(s, n) for s, n in zip(signal, noise))
