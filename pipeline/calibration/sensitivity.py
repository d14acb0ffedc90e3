"""Where a QDQ int8 model loses its accuracy: every quantized activation tensor, compared with the float model's.

Per tensor, over the samples and in one streaming pass (one sample's activations in memory at a time):
- alone: the SQNR of the float tensor against itself quantized with the QDQ model's scale and zero point (this
  tensor's own rounding and clipping, nothing upstream);
- accumulated: the SQNR of the float tensor against the QDQ model's dequantized one (everything upstream as well).
onnxruntime's ``qdq_loss_debug`` computes the second, but holds every activation of every sample at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

DEQUANTIZED = "_DequantizeLinear_Output"  # onnxruntime's QDQ quantizer names a tensor's dequantized copy so


@dataclass(frozen=True)
class TensorError:
    tensor: str
    producer: str  # the op type that writes it in the float model ("input" for the graph input)
    alone_db: float
    accumulated_db: float

    def to_json(self) -> dict:
        return asdict(self)


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise <= 0 else float(10 * np.log10(signal / noise))


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor computed
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _with_outputs(model, names: list[str]):
    import onnx

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def activation_errors(float_path: Path, qdq_path: Path, input_name: str, inputs: np.ndarray) -> list[TensorError]:
    """Every activation the QDQ model quantizes, with its alone and accumulated SQNR, lowest accumulated first; and
    the graph's outputs (accumulated only: the QDQ model gives them in float)."""
    import onnx
    from onnx import numpy_helper

    reference, quantized = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    producers = {out: node.op_type for node in reference.graph.node for out in node.output}
    producers[input_name] = "input"
    constants = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    grids = {}  # tensor -> (scale, zero point, qmin, qmax)
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in producers and node.input[1] in constants:
            zero = constants[node.input[2]] if len(node.input) > 2 else np.uint8(0)
            info = np.iinfo(zero.dtype)
            grids[node.input[0]] = (float(constants[node.input[1]]), float(zero), info.min, info.max)
    outputs = [o.name for o in reference.graph.output]
    producers.update({name: "output" for name in outputs})
    names = sorted(grids)
    wanted = [n for n in names if n != input_name] + [n for n in outputs if n not in grids]
    reference_session = _session(_with_outputs(reference, wanted))
    quantized_session = _session(_with_outputs(quantized, [n + DEQUANTIZED for n in names]))
    sums = {name: np.zeros(3) for name in names + outputs}  # signal, own rounding noise, accumulated noise
    for sample in tqdm(inputs, "int8 sensitivity", unit="sample", delay=2.0, leave=False):
        feed = {input_name: np.array(sample[None], np.float32)}
        floats = dict(zip(wanted, reference_session.run(wanted, feed)))
        floats[input_name] = feed[input_name]
        results = quantized_session.run([n + DEQUANTIZED for n in names] + outputs, feed)
        for name, quant in zip(names + outputs, results):
            value = floats[name].astype(np.float64)
            own = value
            if name in grids:
                scale, zero, low, high = grids[name]
                own = (np.clip(np.round(value / scale) + zero, low, high) - zero) * scale
            sums[name] += (np.square(value).sum(), np.square(value - own).sum(), np.square(value - quant).sum())
    errors = [TensorError(name, producers[name], _db(s[0], s[1]), _db(s[0], s[2])) for name, s in sums.items()]
    return sorted(errors, key=lambda e: e.accumulated_db)
