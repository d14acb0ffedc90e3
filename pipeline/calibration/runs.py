"""Running a float or int8 ONNX model on calibration samples: the sessions and the SQNR the calibration modules
share."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def sqnr_db(signal: float, noise: float) -> float:
    return float("inf") if noise <= 0 else float(10 * np.log10(signal / noise))


def ort_session(model, single_thread: bool = False, every_tensor: bool = False):
    """An ONNX Runtime CPU session of ``model`` (a path or a ModelProto), quiet; ``single_thread`` for latency,
    ``every_tensor`` to keep every intermediate tensor computed (no graph optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if single_thread:
        options.intra_op_num_threads = options.inter_op_num_threads = 1
    if every_tensor:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def with_outputs(model, names: list[str]):
    """``model`` (a ModelProto, changed in place) with ``names`` added to its graph outputs, as float tensors."""
    import onnx

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def output_sqnr_db(reference_path: Path, other_path: Path, inputs: np.ndarray, input_name: str = "input") -> float:
    """SQNR (dB) of ``other_path``'s first output against ``reference_path``'s, over ``inputs`` one at a time."""
    sessions = [ort_session(p) for p in (reference_path, other_path)]
    signal = noise = 0.0
    for x in inputs:
        reference, other = (s.run(None, {input_name: np.array(x[None], np.float32)})[0].astype(np.float64)
                            for s in sessions)
        signal, noise = signal + np.square(reference).sum(), noise + np.square(reference - other).sum()
    return sqnr_db(signal, noise)
