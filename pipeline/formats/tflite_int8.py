"""The int8 TFLite model of a conversion, made in onnx2tf's child process (it needs TensorFlow).

The TensorFlow Lite converter calibrates a float model (each activation's min and max over the samples) and then
quantizes it. Here its ranges are replaced by the pipeline's own (the calibration step's: those ONNX Runtime's int8
model has, and the weights were tuned through) on every TFLite tensor that holds the same values as an ONNX tensor
with a range. Two reasons, both measured on EfficientNet-Lite1:
- tuned weights suit the rounding they were trained through; with the converter's own ranges the TFLite model was
  2.4 dB further from the float logits than ONNX Runtime's, with the pipeline's ranges it is as close;
- the converter's calibration gives the project convolution of each residual block the range of the sum that
  reads it (the block's ADD output: 2–3 times wider), so those tensors round coarsely.

TFLite tensors are matched to ONNX ones by what they hold, whatever the layout and names onnx2tf gives them: element
count, mean, mean absolute value and standard deviation on ``MATCH_SAMPLES`` calibration samples. Tensors that hold
the same values get the same range, so a tie costs nothing. Tensors with no match (ops onnx2tf adds) keep the
converter's ranges.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..profile import Int8Granularity

MATCH_SAMPLES = 2  # calibration samples the tensors are matched on
MATCH_TOLERANCE = 1e-3  # largest difference of the statistics, relative to the tensor's mean absolute value
# Ops that only move or pick values, which onnx2tf adds (an explicit PAD before a strided convolution, NCHW/NHWC
# transposes): their output has no ONNX tensor, and takes the range of their input, as the quantizer would.
SAME_RANGE_OPS = frozenset({"PAD", "PADV2", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D"})


@dataclass(frozen=True)
class RangesSet:
    """How many of the calibrated model's activation tensors took the pipeline's range."""

    tensors: int  # activation tensors the converter calibrated
    from_pipeline: int  # of those, the ones that now have the pipeline's range

    def to_json(self) -> dict:
        return asdict(self)


def calibrate(saved_model: Path, inputs: np.ndarray) -> bytes:
    """The float TFLite model of ``saved_model`` with the converter's ranges over ``inputs`` (TFLite layout)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.array(x[None], np.float32)] for x in inputs)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_calibrate_only = True  # the ranges; quantize() makes the int8 models from them
    return converter.convert()


def quantize(calibrated: bytes, granularity: Int8Granularity, io_dtype: str,
             in_float: list[str] | tuple[str, ...] = ()) -> bytes:
    """The int8 model of a calibrated one, as the converter makes it, with the ops named in ``in_float`` (by the
    tensor each writes) left in float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    io = tf.as_dtype(io_dtype)
    return convert.mlir_quantize(
        calibrated, disable_per_channel=granularity is Int8Granularity.PER_TENSOR, input_data_type=io,
        output_data_type=io, denylisted_nodes=list(in_float) or None,
        disable_per_channel_for_dense_layers=not granularity.per_channel("Gemm"))


def _statistics(values: np.ndarray) -> tuple[int, np.ndarray]:
    values = values.astype(np.float64)
    return values.size, np.array([values.mean(), np.abs(values).mean(), values.std()])


def _tflite_statistics(model: bytes, inputs: np.ndarray) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Each float tensor's statistics per sample, by tensor index (XNNPACK off: it would not keep its tensors)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    found: dict[int, list] = {}
    for x in inputs:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x[None], np.float32))
        interpreter.invoke()
        for tensor in interpreter.get_tensor_details():
            if tensor["dtype"] == np.float32:
                try:
                    found.setdefault(tensor["index"], []).append(_statistics(interpreter.get_tensor(tensor["index"])))
                except ValueError:  # a tensor with no data (an unused intermediate)
                    continue
    return found


def _onnx_statistics(onnx_path: Path, names: list[str], inputs_nchw: np.ndarray) -> dict[str, list]:
    """The statistics of the named ONNX tensors (the graph input among them) per sample."""
    import onnx

    from calibration.runs import ort_session, with_outputs

    model = onnx.load(str(onnx_path))
    graph_inputs = {i.name for i in model.graph.input}
    produced = {o for node in model.graph.node for o in node.output}
    session = ort_session(with_outputs(model, [name for name in names if name in produced]))
    wanted = set(names)
    fetched = [o.name for o in session.get_outputs() if o.name in wanted]
    found: dict[str, list] = {}
    for x in inputs_nchw:
        values = dict(zip(fetched, session.run(fetched, {"input": np.ascontiguousarray(x[None], np.float32)})))
        values.update({name: x for name in graph_inputs if name in wanted})
        for name, value in values.items():
            found.setdefault(name, []).append(_statistics(value))
    return found


def _same_values(a: list[tuple[int, np.ndarray]], b: list[tuple[int, np.ndarray]]) -> bool:
    return all(size_a == size_b and np.abs(sa - sb).max() <= MATCH_TOLERANCE * max(sa[1], 1e-12)
               for (size_a, sa), (size_b, sb) in zip(a, b))


def set_ranges(calibrated: bytes, onnx_path: Path, ranges: dict[str, tuple[float, float]], inputs: np.ndarray,
               nchw: bool) -> tuple[bytes, RangesSet]:
    """``calibrated`` with the ranges of ``ranges`` (ONNX tensor -> (low, high)) on the TFLite tensors holding the
    same values; ``inputs`` are calibration samples in the TFLite layout (``nchw`` or NHWC)."""
    from tensorflow.lite.tools import flatbuffer_utils

    few = np.asarray(inputs[:MATCH_SAMPLES], np.float32)
    tflite = _tflite_statistics(calibrated, few)
    onnx_found = _onnx_statistics(onnx_path, list(ranges), few if nchw else few.transpose(0, 3, 1, 2))
    by_size: dict[int, list[str]] = {}
    for name, found in onnx_found.items():
        by_size.setdefault(found[0][0], []).append(name)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    calibrated_tensors = [i for i, t in enumerate(graph.tensors) if t.quantization is not None and
                          t.quantization.min is not None and len(t.quantization.min) == 1]
    chosen: dict[int, tuple[float, float]] = {}
    for index in calibrated_tensors:
        match = next((name for name in by_size.get(tflite[index][0][0], [])
                      if _same_values(tflite[index], onnx_found[name])), None) if index in tflite else None
        if match is not None:
            chosen[index] = ranges[match]
    for op in graph.operators:  # in execution order, so that a chain of such ops passes the range on
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) in SAME_RANGE_OPS and op.inputs[0] in chosen:
            chosen.setdefault(int(op.outputs[0]), chosen[op.inputs[0]])
    for index in calibrated_tensors:
        if index in chosen:
            graph.tensors[index].quantization.min = np.array([chosen[index][0]], np.float32)
            graph.tensors[index].quantization.max = np.array([chosen[index][1]], np.float32)
    applied = RangesSet(len(calibrated_tensors), sum(index in chosen for index in calibrated_tensors))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), applied
