"""Mixed precision for a TFLite int8 model, in the onnx2tf child process (it needs TensorFlow): when the int8 model
disagrees with the float TFLite model on more calibration samples than the tolerance allows, the tensors whose int8
rounding adds most noise at the output are kept in float, with the ops that write and read them, as for ONNX
Runtime (``calibration.fallback``: the same search and stopping rule).

Each trial re-quantizes the calibrated model the int8 model was made from (``tflite_int8.quantize``, with ops named
by the tensors they write left in float) in well under a second, so the calibration runs once. The int8 model
stays the one judged first; a model with ops in float replaces it only when it reaches the tolerance.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from calibration.fallback import Judge, Runtime, by_output_impact, keep_in_float, timed_p50_ms


SEARCH_SAMPLES = 32  # of the calibration samples, those the search measures the output noise on (as onnx-int8's)


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _p50_ms(path: Path, sample: np.ndarray) -> float:
    interpreter = _interpreter(path)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(sample[None], np.float32))
    return timed_p50_ms(interpreter.invoke)


def litert(onnx_path: Path) -> Runtime:
    """LiteRT on the TFLite models converted from ``onnx_path``: their outputs paired with the ONNX model's by name,
    in its order and, where onnx2tf wrote a 4-D output in NHWC, in its layout (a detector's decoder reads them so)."""
    import onnx

    from board_runtime.sessions import output_order, tflite_output_names

    from ..onnxmodel import onnx_output_shapes
    from ..tflite_file import layout_back

    names = [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
    shapes = onnx_output_shapes(onnx_path)

    def outputs(path: Path, inputs: np.ndarray) -> list[np.ndarray]:
        interpreter = _interpreter(path)
        first, details = interpreter.get_input_details()[0], interpreter.get_output_details()
        order = output_order(tflite_output_names(interpreter), names) or list(range(len(details)))
        found: list[list[np.ndarray]] = [[] for _ in order]
        for x in inputs:
            interpreter.set_tensor(first["index"], np.ascontiguousarray(x[None], np.float32))
            interpreter.invoke()
            for column, index in zip(found, order):
                column.append(interpreter.get_tensor(details[index]["index"]).astype(np.float64))
        stacked = [np.concatenate(column) for column in found]
        back = [layout_back(details[i]["shape"], shape).get("transpose") for i, shape in zip(order, shapes)]
        return [x if axes is None else x.transpose(axes) for x, axes in zip(stacked, back)]

    return Runtime(outputs, _p50_ms)


def candidates(int8_path: Path) -> list[tuple[str, list[str]]]:
    """(tensor, the ops that write and read it, each named by the tensor it writes) for every int8 activation the
    model's ops write, in execution order."""
    interpreter = _interpreter(int8_path)
    tensors = interpreter.get_tensor_details()
    name = {t["index"]: t["name"] for t in tensors}
    integer = {t["index"] for t in tensors if t["dtype"] in (np.int8, np.uint8)}
    ops = [o for o in interpreter._get_ops_details() if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    readers: dict[int, list[str]] = {}
    for op in ops:
        for index in op["inputs"]:
            readers.setdefault(int(index), []).append(name[int(op["outputs"][0])])
    found = []
    for op in ops:
        written = int(op["outputs"][0])
        if written in integer:
            found.append((name[written], list(dict.fromkeys([name[written], *readers.get(written, [])]))))
    return found


def keep_ops_in_float(quantize: Callable[[list[str], Path], None], inputs: np.ndarray, onnx_path: Path,
                      float_path: Path, int8_path: Path, tolerance: float, judge: Judge, report: Path,
                      judged_from: int = 0) -> None:
    """``int8_path`` with its most harmful tensors in float (``quantize(ops, path)`` writes the int8 model with
    those ops in float), if that reaches ``tolerance`` points of disagreement by ``judge`` with ``float_path`` (both
    converted from ``onnx_path``) on the calibration ``inputs`` from ``judged_from`` on (else left as it is); what
    was tried goes to ``report`` (JSON)."""
    trial = int8_path.with_name("impact_trial.tflite")
    judged = inputs[judged_from:]
    runtime = litert(onnx_path)
    harmful = by_output_impact(quantize, float_path, trial, judged[:SEARCH_SAMPLES], candidates(int8_path),
                               runtime=runtime)
    fallback = keep_in_float(quantize, float_path, int8_path, judged, harmful, tolerance, runtime, judge)
    trial.unlink(missing_ok=True)
    report.write_text(json.dumps(fallback.to_json()))
