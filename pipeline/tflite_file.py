"""What a ``.tflite`` file holds, read from its flatbuffer (``ai_edge_litert``'s schema, no interpreter): the
operators, the constant tensors, their types, and the precision and work that follow from them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, ModelError

# Work per output element of the operators that do most of a CNN's arithmetic; a multiply-add counts as 2 FLOPs.
# (weight shape -> multiply-adds per output element)
MACS_PER_OUTPUT = {
    "CONV_2D": lambda w: int(np.prod(w[1:])),  # [out, kh, kw, in]
    "DEPTHWISE_CONV_2D": lambda w: int(w[1] * w[2]),  # [1, kh, kw, out]
    "FULLY_CONNECTED": lambda w: int(w[-1]),  # [out, in]
    "TRANSPOSE_CONV": lambda w: int(np.prod(w[1:])),
}


@dataclass(frozen=True)
class TFLiteContents:
    operators: tuple[str, ...]  # builtin names, or CUSTOM:<name> (Flex ops are custom ops named Flex...)
    params: int  # elements of the constant tensors that feed operators as weights
    flops: int  # of the operators in MACS_PER_OUTPUT
    weight_types: tuple[str, ...]  # FLOAT32, FLOAT16, INT8, ... of those constants
    non_builtin: tuple[tuple[str, str], ...] = ()  # (custom op, the tensor it writes: the layer's name) per such op

    @property
    def precision(self) -> str:
        """int8 when the weights are integers, fp16 when some are stored in half precision, else fp32."""
        if "INT8" in self.weight_types or "UINT8" in self.weight_types:
            return "int8"
        return "fp16" if "FLOAT16" in self.weight_types else "fp32"


def _names(enum) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def read_tflite(path: Path) -> TFLiteContents:
    """The contents of ``path``; a one-line error when it is not a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    ops, types = _names(schema.BuiltinOperator), _names(schema.TensorType)
    graph = model.subgraphs[0]
    constant = lambda t: bool(model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)  # noqa: E731
                              or model.buffers[t.buffer].size)
    operators, weights, flops, odd = [], {}, 0, []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
            written = graph.tensors[op.outputs[0]].name if len(op.outputs) else b"?"
            odd.append((custom, written.decode() if isinstance(written, bytes) else str(written)))
        operators.append(name)
        inputs = [graph.tensors[i] for i in op.inputs if i >= 0]
        weights.update({i: graph.tensors[i] for i in op.inputs if i >= 0 and constant(graph.tensors[i])})
        if name in MACS_PER_OUTPUT and len(inputs) > 1 and inputs[1].shape is not None:
            output = graph.tensors[op.outputs[0]]
            flops += 2 * int(np.prod(output.shape)) * MACS_PER_OUTPUT[name](list(inputs[1].shape))
    params = sum(int(np.prod(t.shape)) for t in weights.values() if t.shape is not None and len(t.shape))
    return TFLiteContents(tuple(operators), params, flops, tuple(sorted({types[t.type] for t in weights.values()})),
                          tuple(odd))


# What onnx2tf can write with builtin ops instead (its -rtpo / replace_to_pseudo_operators list), by Flex op.
PSEUDO_OPS = {"FlexErf": "Erf", "FlexGelu": "GeLU", "FlexAsin": "Asin", "FlexAcos": "Acos", "FlexAtan": "Atan",
              "FlexAbs": "Abs", "FlexPow": "Power", "FlexGatherNd": "GatherND", "FlexNeg": "Neg"}


def check_builtin_only(name: str, contents: TFLiteContents) -> None:
    """A one-line error naming the first custom or Flex op of model ``name`` and its layer: LiteRT's and
    tflite-runtime's packages have no Flex delegate, and the Edge TPU compiler maps builtin ops only."""
    blocking = list(contents.non_builtin)
    if not blocking:
        return
    op, layer = blocking[0]
    more = f" and {len(blocking) - 1} more" if len(blocking) > 1 else ""
    pseudo = sorted({PSEUDO_OPS[o] for o, _ in blocking if o in PSEUDO_OPS})
    remedy = (f"convert with onnx2tf's builtin approximations: --tflite-pseudo-ops {','.join(pseudo)}" if pseudo
              else "replace that layer in the model with builtin ops")
    raise ConversionError(f"{name}: {op} (layer '{layer}'){more} is not a TFLite builtin op, and the boards' TFLite "
                          f"runtimes have no Flex delegate; {remedy}")


def int8_constants(path: Path) -> list[np.ndarray]:
    """The int8 constant tensors of ``path`` (the quantized weights), shaped as stored."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    found = []
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type == schema.TensorType.INT8 and data is not None and len(data) and tensor.shape is not None:
            found.append(np.asarray(data, np.uint8).view(np.int8).reshape(tuple(tensor.shape)))
    return found
