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
class TFLiteTensor:
    name: str
    dtype: str  # FLOAT32, INT8, UINT8, INT32, ...
    shape: tuple[int, ...]
    signature: tuple[int, ...]  # the shape with -1 where a dimension is dynamic
    constant: bool  # has data in the file (a weight or bias)
    nbytes: int  # of that data; 0 for an activation
    scales: int  # how many quantization scales (1: per tensor, >1: per channel, 0: not quantized)
    values: tuple[int, ...] | None = None  # of a small integer constant (axes, paddings, strides), flattened


@dataclass(frozen=True)
class TFLiteOp:
    index: int  # in execution order
    name: str  # builtin name, or CUSTOM:<name> (Flex ops are custom ops named Flex...)
    version: int  # the operator code's version, which converters of a given age accept or refuse
    inputs: tuple[TFLiteTensor, ...]
    outputs: tuple[TFLiteTensor, ...]
    options: dict  # the builtin options' fields: strideH, dilationHFactor, fusedActivationFunction (by name), ...

    @property
    def layer(self) -> str:
        """The name of the tensor it writes: converters name it after the layer it came from."""
        return self.outputs[0].name if self.outputs else "?"

    @property
    def multiply_adds(self) -> int:
        """Of the operators in MACS_PER_OUTPUT; 0 for the others."""
        if self.name not in MACS_PER_OUTPUT or len(self.inputs) < 2 or not self.outputs:
            return 0
        return int(np.prod(self.outputs[0].shape)) * MACS_PER_OUTPUT[self.name](list(self.inputs[1].shape))


@dataclass(frozen=True)
class TFLiteGraph:
    ops: tuple[TFLiteOp, ...]  # of the main subgraph
    inputs: tuple[TFLiteTensor, ...]
    outputs: tuple[TFLiteTensor, ...]
    subgraphs: int


@dataclass(frozen=True)
class TFLiteContents:
    operators: tuple[str, ...]  # builtin names, or CUSTOM:<name>
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


SMALL_CONSTANT_TYPES = {"INT32": np.int32, "INT64": np.int64}


def _names(enum) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_graph(path: Path) -> TFLiteGraph:
    """The operators of ``path`` with their tensors and options; a one-line error when it is not a TFLite
    flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    ops, types, activations = (_names(schema.BuiltinOperator), _names(schema.TensorType),
                               _names(schema.ActivationFunctionType))
    graph = model.subgraphs[0]

    def tensor(i: int) -> TFLiteTensor:
        t = graph.tensors[i]
        buffer = model.buffers[t.buffer]
        nbytes = len(buffer.data) if buffer.data is not None else int(buffer.size or 0)
        shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
        signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
        scales = len(t.quantization.scale) if t.quantization is not None and t.quantization.scale is not None else 0
        dtype = types.get(t.type, "?")
        values = None
        if dtype in SMALL_CONSTANT_TYPES and buffer.data is not None and 0 < nbytes <= 64:
            values = tuple(int(v) for v in np.asarray(buffer.data, np.uint8).view(SMALL_CONSTANT_TYPES[dtype]))
        return TFLiteTensor(_text(t.name), dtype, shape, signature, nbytes > 0, nbytes, scales, values)

    found = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        name = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        if name == "CUSTOM":
            name = f"CUSTOM:{_text(code.customCode)}"
        options = dict(vars(op.builtinOptions)) if op.builtinOptions is not None else {}
        if "fusedActivationFunction" in options:
            options["fusedActivationFunction"] = activations.get(options["fusedActivationFunction"], "?")
        found.append(TFLiteOp(index, name, int(code.version), tuple(tensor(i) for i in op.inputs if i >= 0),
                              tuple(tensor(i) for i in op.outputs if i >= 0), options))
    return TFLiteGraph(tuple(found), tuple(tensor(i) for i in graph.inputs), tuple(tensor(i) for i in graph.outputs),
                       len(model.subgraphs))


def read_tflite(path: Path) -> TFLiteContents:
    """The contents of ``path``; a one-line error when it is not a TFLite flatbuffer."""
    graph = read_graph(path)
    weights = {}
    for op in graph.ops:
        weights.update({t.name: t for t in op.inputs if t.constant})
    flops = 2 * sum(op.multiply_adds for op in graph.ops)
    params = sum(int(np.prod(t.shape)) for t in weights.values() if len(t.shape))
    odd = tuple((op.name.partition(":")[2], op.layer) for op in graph.ops if op.name.startswith("CUSTOM:"))
    return TFLiteContents(tuple(op.name for op in graph.ops), params, flops,
                          tuple(sorted({t.dtype for t in weights.values()})), odd)


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


def layout_back(shape, reference: list[int] | None) -> dict:
    """{"transpose": [0, 3, 1, 2]} for a 4-D output that is the reference's NCHW one in NHWC, else nothing."""
    shape = [int(d) for d in shape]
    if reference is None or len(shape) != 4 or shape == list(reference):
        return {}
    return {"transpose": [0, 3, 1, 2]} if [shape[0], shape[3], shape[1], shape[2]] == list(reference) else {}
