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

from board_runtime.sessions import output_order, tflite_output_names

from .runs import feed_tflite, ort_session, sqnr_db, tflite_interpreter, with_outputs

DEQUANTIZED = "_DequantizeLinear_Output"  # onnxruntime's QDQ quantizer names a tensor's dequantized copy so


@dataclass(frozen=True)
class TensorError:
    tensor: str
    producer: str  # the op type that writes it in the float model ("input" for the graph input)
    alone_db: float
    accumulated_db: float
    node: str = ""  # the node that writes it (ONNX models)

    def to_json(self) -> dict:
        return asdict(self)


def activation_errors(float_path: Path, qdq_path: Path, input_name: str, inputs: np.ndarray) -> list[TensorError]:
    """Every activation the QDQ model quantizes, with its alone and accumulated SQNR, lowest accumulated first; and
    the graph's outputs (accumulated only: the QDQ model gives them in float)."""
    import onnx
    from onnx import numpy_helper

    reference, quantized = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    producers = {out: node.op_type for node in reference.graph.node for out in node.output}
    nodes = {out: node.name for node in reference.graph.node for out in node.output}
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
    reference_session = ort_session(with_outputs(reference, wanted), unfused=True)
    quantized_session = ort_session(with_outputs(quantized, [n + DEQUANTIZED for n in names]), unfused=True)
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
    errors = [TensorError(name, producers[name], sqnr_db(s[0], s[1]), sqnr_db(s[0], s[2]), nodes.get(name, ""))
              for name, s in sums.items()]
    return sorted(errors, key=lambda e: e.accumulated_db)


FUSED_ACTIVATIONS = ("Relu", "Clip")  # the quantizer folds these into the op before them: they go float together


def fallback_candidates(model_path: Path, errors: list[TensorError]) -> list[tuple[str, list[str]]]:
    """(tensor, the nodes that write and read it) for each quantized tensor, in graph order: a tensor stays float only
    when none of those nodes is quantized (and a Relu or Clip only with the op whose output it clips: alone, the
    quantizer gives that op's output an int8 range of its own, without the clip)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    writer = {out: node for node in graph.node for out in node.output}
    touching: dict[str, list[str]] = {}
    for node in graph.node:
        for tensor in [*node.input, *node.output]:
            touching.setdefault(tensor, []).append(node.name)
    position = {node.name: index for index, node in enumerate(graph.node)}

    def ops(error: TensorError) -> list[str]:
        found = touching.get(error.tensor, [error.node])
        producer = writer.get(error.tensor)
        if producer is not None and producer.op_type in FUSED_ACTIVATIONS and producer.input[0] in writer:
            found = [writer[producer.input[0]].name, *found]
        return list(dict.fromkeys(found))

    written = sorted((e for e in errors if e.node and e.producer not in ("input", "output")),
                     key=lambda e: position.get(e.node, len(position)))
    return [(e.tensor, ops(e)) for e in written]


def tflite_activation_errors(float_path: Path, int8_path: Path, inputs: np.ndarray, nhwc: bool,
                             output_names: list[str] | None = None) -> list[TensorError]:
    """As ``activation_errors``, for a full-integer TFLite model against the float TFLite model of the same network:
    tensors are matched by name (the converter names them after the same TensorFlow ops), inputs are NCHW; the
    outputs by the reference model's ``output_names`` (in its order: the int8 converter numbers them so)."""
    reference, quantized = tflite_interpreter(float_path), tflite_interpreter(int8_path)
    floats = {d["name"]: d for d in reference.get_tensor_details()}
    constants = {d["name"] for d in quantized.get_tensor_details() if d["name"].startswith(("tfl.pseudo", "arith"))}
    pairs = []  # (name, float index, int8 index, scale, zero point, dtype) of each integer activation
    for detail in quantized.get_tensor_details():
        name, params = detail["name"], detail["quantization_parameters"]
        if name in floats and name not in constants and detail["dtype"] in (np.int8, np.uint8) \
                and len(params["scales"]) == 1 and list(floats[name]["shape"]) == list(detail["shape"]):
            pairs.append((name, floats[name]["index"], detail["index"], float(params["scales"][0]),
                          int(params["zero_points"][0]), detail["dtype"]))
    # the outputs, paired by name (the converters may order them differently)
    names = list(output_names or tflite_output_names(reference))
    reference_outputs, quantized_outputs = (
        {name: model.get_output_details()[i] for name, i in zip(names, output_order(tflite_output_names(model), names)
                                                                or range(len(names)))}
        for model in (reference, quantized))
    sums = {p[0]: np.zeros(3) for p in pairs} | {name: np.zeros(3) for name in names}
    for sample in tqdm(inputs, "int8 sensitivity (TFLite)", unit="sample", delay=2.0, leave=False):
        feed_tflite(reference, np.asarray(sample, np.float32), nhwc)
        feed_tflite(quantized, np.asarray(sample, np.float32), nhwc)
        for name, float_index, int8_index, scale, zero, dtype in pairs:
            value = reference.get_tensor(float_index).astype(np.float64)
            info = np.iinfo(dtype)
            own = (np.clip(np.round(value / scale) + zero, info.min, info.max) - zero) * scale
            quant = (quantized.get_tensor(int8_index).astype(np.float64) - zero) * scale
            sums[name] += (np.square(value).sum(), np.square(value - own).sum(), np.square(value - quant).sum())
        for name in names:
            value = reference.get_tensor(reference_outputs[name]["index"]).astype(np.float64)
            out = quantized_outputs[name]
            quant = quantized.get_tensor(out["index"]).astype(np.float64)
            if out["quantization"][0]:
                quant = (quant - out["quantization"][1]) * out["quantization"][0]
            sums[name] += (np.square(value).sum(), 0.0, np.square(value - quant).sum())
    producers = {p[0]: p[0].split(";")[0].rsplit("/", 1)[-1] for p in pairs} | {name: "output" for name in names}
    errors = [TensorError(name, producers[name], sqnr_db(s[0], s[1]), sqnr_db(s[0], s[2])) for name, s in sums.items()]
    return sorted(errors, key=lambda e: e.accumulated_db)


COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TFLITE_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _tail(nodes: list[tuple[str, str, list[str], list[str]]], compute: tuple[str, ...]) -> list[str]:
    """The names of the (name, op, inputs, outputs) nodes after the last compute op on every path: a detector's
    decoding (activations, reshapes, box arithmetic), which int8 rounds at full output range."""
    readers: dict[str, list[int]] = {}
    for index, (_, _, inputs, _) in enumerate(nodes):
        for tensor in inputs:
            readers.setdefault(tensor, []).append(index)
    feeds_compute = [False] * len(nodes)
    for index in reversed(range(len(nodes))):  # nodes are in topological order
        feeds_compute[index] = any(nodes[r][1] in compute or feeds_compute[r]
                                   for tensor in nodes[index][3] for r in readers.get(tensor, []))
    return [name for (name, op, _, _), feeds in zip(nodes, feeds_compute) if op not in compute and not feeds]


def onnx_tail(path: Path) -> list[str]:
    """The ONNX graph's nodes after its last convolution or matrix product (``_tail``), by name."""
    import onnx

    graph = onnx.load(str(path)).graph
    return _tail([(n.name, n.op_type, list(n.input), list(n.output)) for n in graph.node], COMPUTE_OPS)


def tflite_tail(path: Path) -> list[str]:
    """The TFLite model's ops after its last convolution or fully connected op, each named by the tensor it writes
    (as the converter's denylist names ops)."""
    interpreter = tflite_interpreter(path)
    name = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = [o for o in interpreter._get_ops_details() if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    return _tail([(name[int(o["outputs"][0])], o["op_name"], [str(i) for i in o["inputs"]],
                   [str(i) for i in o["outputs"]]) for o in ops], TFLITE_COMPUTE_OPS)
