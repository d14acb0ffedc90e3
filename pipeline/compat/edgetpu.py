"""The Edge TPU compiler's row: which ops of a full-integer TFLite it will map to the Edge TPU, predicted from the
flatbuffer.

The rules are Coral's published ones (coral.ai/docs/edgetpu/models-intro/, "Supported operations" and "Model
requirements"), and what users and Coral's staff report of compiler 16 (google-coral/edgetpu issues):
- it maps ops in order and stops at the first it cannot map: "that operation and everything after it executes on
  the CPU, even if supported operations occur later" (one Edge TPU subgraph; the others get "More than one subgraph
  is not supported");
- it refuses a whole model holding an op version newer than it knows ("Didn't find op for builtin opcode
  'CONV_2D' version '6'", #631; TRANSPOSE_CONV v4, #845; QUANTIZE v3, #879; EXP v2);
- tensors of more than 3 dimensions may be larger than 1 only in their 3 innermost;
- parameters are cached in about 8 MiB of on-chip memory; the rest streams from off-chip memory, which is slower.
The compiler itself runs only on x86-64 Linux and is in neither PyPI nor Debian's archive; the bundle carries its
command (``scripts``) to run where it is installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..tflite_file import TFLiteOp, read_graph
from .base import ACCELERATED, CPU, REFUSED, Compatibility, OpPlacement, Toolchain, register_toolchain

ON_CHIP_BYTES = 8 * 2**20  # the parameter cache (coral.ai/docs/edgetpu/pipeline/: "~8 MB")
INTEGER = {"INT8", "UINT8"}


def _no_fused_activation(op: TFLiteOp) -> str:
    fused = op.options.get("fusedActivationFunction", "NONE")
    return "" if fused == "NONE" else f"has a fused activation ({fused}), which the Edge TPU does not fuse here"


def _same_dilation(op: TFLiteOp) -> str:
    x, y = op.options.get("dilationWFactor", 1), op.options.get("dilationHFactor", 1)
    return "" if x == y else f"dilation differs in x and y ({x} vs {y})"


def _one_dimensional(op: TFLiteOp) -> str:
    shape = op.outputs[0].shape if op.outputs else ()
    return "" if sum(d > 1 for d in shape) <= 1 else f"output {list(shape)} is not one-dimensional (batch > 1?)"


def _axes(op: TFLiteOp) -> tuple[int, ...] | None:
    return op.inputs[1].values if len(op.inputs) > 1 else None


def _mean(op: TFLiteOp) -> str:
    axes, shape = _axes(op), op.inputs[0].shape
    if axes is None:
        return "its axes are not a constant"
    axes = tuple(a % len(shape) for a in axes)
    if 0 in axes:
        return "reduces over the batch dimension"
    if len(shape) - 1 in axes and shape[-1] % 4:
        return f"reduces over channels, whose count ({shape[-1]}) is not a multiple of 4"
    return ""


def _no_batch_axis(op: TFLiteOp) -> str:
    """PAD and PACK: nothing along the batch dimension."""
    if op.name == "PAD":
        pads = _axes(op)
        return "pads the batch dimension" if pads is None or any(pads[:2]) else ""
    return "packs along the batch dimension" if op.options.get("axis", 0) == 0 else ""


def _softmax(op: TFLiteOp) -> str:
    shape = op.inputs[0].shape
    size = 1
    for d in shape:
        size *= d
    if sum(d > 1 for d in shape) > 1:
        return f"input {list(shape)} is not one-dimensional"
    return f"input has {size} elements, over 16,000" if size > 16000 else ""


def _unit_strides(op: TFLiteOp) -> str:
    strides = op.inputs[3].values if len(op.inputs) > 3 else None
    return "" if strides is not None and all(s == 1 for s in strides) else "strides other than 1"


def _grouped(op: TFLiteOp) -> str:
    """CONV_2D whose filter is shallower than its input: a grouped convolution (op version 6, refused)."""
    if len(op.inputs) > 1 and op.inputs[0].shape and op.inputs[1].shape and \
            op.inputs[1].shape[-1] != op.inputs[0].shape[-1]:
        return "a grouped convolution"
    return _same_dilation(op)


# Supported ops and the constraint each checks ("" when met); an op missing here is not supported.
RULES: dict[str, Callable[[TFLiteOp], str]] = {
    **{name: (lambda op: "") for name in (
        "ADD", "EXPAND_DIMS", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MINIMUM", "MUL", "QUANTIZE",
        "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE",
        "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "PRELU")},
    "AVERAGE_POOL_2D": _no_fused_activation, "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _no_fused_activation, "CONV_2D": _grouped, "DEPTHWISE_CONV_2D": _same_dilation,
    "FULLY_CONNECTED": _one_dimensional, "MEAN": _mean, "PAD": _no_batch_axis, "PACK": _no_batch_axis,
    "REDUCE_MAX": _mean, "REDUCE_MIN": _mean, "SOFTMAX": _softmax, "STRIDED_SLICE": _unit_strides,
}

# What to change, for the unsupported ops users meet most.
REMEDIES = {
    "HARD_SWISH": "replace hard-swish by ReLU6 or ReLU in the model (MobileNetV3's 'minimalistic' variant)",
    "LEAKY_RELU": "replace leaky ReLU by ReLU, or by PRELU with one alpha per channel",
    "DEQUANTIZE": "quantize the model fully (full-integer int8, no float tensors)",
    "GELU": "replace GELU by ReLU, or convert with --tflite-pseudo-ops GeLU and check the result",
}

# The first version of each op that compiler 16 does not know, and what makes a converter write it (TensorFlow's
# tensorflow/lite/tools/versioning/op_version.cc); a model holding one is refused whole.
REFUSED_VERSIONS = {
    "CONV_2D": (6, "grouped convolution (TF >= 2.9 writes CONV_2D v6 for it)",
                "convert without grouped convolutions (onnx2tf's disable_group_convolution, which this pipeline "
                "sets for Edge TPU targets)"),
    "TRANSPOSE_CONV": (4, "a fused activation on a transposed convolution (TF >= 2.13)",
                       "keep the activation a separate op"),
    "QUANTIZE": (3, "a per-channel QUANTIZE (TF >= 2.7)", "quantize that tensor per tensor"),
    "EXP": (2, "an integer EXP (recent TF)", "keep EXP out of the integer part of the model"),
    "TRANSPOSE": (6, "a transpose of rank above 5", "reshape to rank 5 or less first"),
}


def _rank_problem(op: TFLiteOp) -> str:
    for tensor in (*op.inputs, *op.outputs):
        if not tensor.constant and len(tensor.shape) > 3 and any(d > 1 for d in tensor.shape[:-3]):
            return f"tensor {list(tensor.shape)} has a dimension > 1 outside its 3 innermost (batch > 1?)"
    return ""


def _type_problem(op: TFLiteOp) -> str:
    odd = sorted({t.dtype for t in (*op.inputs, *op.outputs)
                  if t.dtype not in INTEGER and not (t.constant and t.dtype in ("INT32", "INT64"))})
    return f"works on {', '.join(odd)} tensors (the Edge TPU takes 8-bit integers only)" if odd else ""


def placement(op: TFLiteOp, refusing: dict[str, TFLiteOp]) -> tuple[str, str, str]:
    """(runs_on, why, change) for ``op`` alone, before the one-segment rule; ``refusing`` holds, per op code that
    compiler 16 does not know, the op that made the converter write that version."""
    if op.name in refusing:
        first, (_, cause, change) = refusing[op.name], REFUSED_VERSIONS[op.name]
        culprit = "this op" if first is op else f"op {first.index}"
        return (REFUSED, f"{op.name} is stored as version {op.version}, newer than compiler 16 knows (it refuses the "
                         f"whole model): {cause}, {culprit}", change)
    if op.name not in RULES:
        return CPU, "not an Edge TPU op", REMEDIES.get(op.name, "replace it with ops in the Edge TPU's table")
    problem = _type_problem(op) or _rank_problem(op) or RULES[op.name](op)
    if problem:
        return CPU, problem, "quantize the model fully" if "integers" in problem else "change that layer"
    return ACCELERATED, "", ""


def _refusing(ops: tuple[TFLiteOp, ...]) -> dict[str, TFLiteOp]:
    """Per op code stored at a version compiler 16 refuses, the op that needs that version (a grouped CONV_2D), or
    the first of that code when none can be told apart (a converter writes one version per op code)."""
    found = {}
    for op in ops:
        refused = REFUSED_VERSIONS.get(op.name)
        if refused and op.version >= refused[0]:
            if op.name not in found or (op.name == "CONV_2D" and _grouped(op) == "a grouped convolution"
                                        and _grouped(found[op.name]) != "a grouped convolution"):
                found[op.name] = op
    return found


def _edge_conversion(op: TFLiteOp, graph) -> bool:
    """A QUANTIZE of the model's float input, or a DEQUANTIZE to its float output: the compiler leaves these on the
    CPU at the edges of the Edge TPU segment, without splitting it."""
    inputs, outputs = {t.name for t in graph.inputs}, {t.name for t in graph.outputs}
    return (op.name == "QUANTIZE" and op.inputs[0].name in inputs) or \
        (op.name == "DEQUANTIZE" and bool(op.outputs) and op.outputs[0].name in outputs)


def _cpu_share(first: OpPlacement, graph_ops: tuple[TFLiteOp, ...]) -> OpPlacement:
    """The first op off the Edge TPU, with how much of the model's arithmetic runs on the CPU from there on: a
    detector's decoding after its last large convolution (YOLO's DFL softmax) splits off a sliver of the work,
    an unsupported activation early in the network nearly all of it."""
    total = sum(op.multiply_adds for op in graph_ops)
    if not total:
        return first
    share = sum(op.multiply_adds for op in graph_ops[first.index:]) / total
    why = (f"{first.why}; from here on, {len(graph_ops) - first.index} ops and {share:.2%} of the model's "
           "multiply-adds run on the CPU")
    change = first.change if share >= 0.01 else \
        f"{first.change}, or leave it there: the Edge TPU segment already holds {1 - share:.2%} of the multiply-adds"
    return OpPlacement(first.index, first.op, first.layer, first.runs_on, why, change)


def check(path: Path, kind: str, target) -> Compatibility:
    graph = read_graph(path)
    ops, split, refusing = [], None, _refusing(graph.ops)
    for op in graph.ops:
        runs_on, why, change = placement(op, refusing)
        if runs_on == CPU and _edge_conversion(op, graph):
            why = f"converts the model's float {'input' if op.name == 'QUANTIZE' else 'output'}: runs on the CPU, " \
                  "outside the Edge TPU segment"
            change = "uint8 I/O (the profile's io_dtype) moves it into the model's caller"
        elif runs_on == ACCELERATED and split is not None:
            runs_on, why, change = CPU, (f"after op {split.index} ({split.name}), the first the Edge TPU cannot run: "
                                         "the compiler maps one segment only"), f"make op {split.index} an Edge TPU op"
        elif runs_on == CPU and split is None:
            split = op
        ops.append(OpPlacement(op.index, f"{op.name} v{op.version}", op.layer, runs_on, why, change))
    if split is not None:
        ops[split.index] = _cpu_share(ops[split.index], graph.ops)
    mapped = {op.index for op, placed in zip(graph.ops, ops) if placed.runs_on == ACCELERATED}
    parameter_bytes = sum(t.nbytes for op in graph.ops if op.index in mapped for t in op.inputs if t.constant)
    problems = []
    if graph.subgraphs > 1:
        problems.append(f"{graph.subgraphs} subgraphs: the compiler takes the first only")
    dynamic = [t.name for t in graph.inputs if any(d < 0 for d in t.signature)]
    if dynamic:
        problems.append(f"input {dynamic[0]} has a dynamic shape: the compiler needs static shapes; export with a "
                        "fixed input shape")
    wanted = target.int8.io_dtype.value.upper()
    for tensor in (*graph.inputs, *graph.outputs):
        if tensor.dtype != wanted:
            problems.append(f"{tensor.name} is {tensor.dtype.lower()}, the profile's I/O type is {wanted.lower()}"
                            + (" (PyCoral takes uint8 input only)" if wanted == "UINT8" else ""))
    if not any(t.dtype in INTEGER for op in graph.ops for t in op.inputs if t.constant):
        problems.append("the model is not quantized (no 8-bit weights): the Edge TPU runs full-integer models only; "
                        "quantize it to int8 first")
    if parameter_bytes > ON_CHIP_BYTES:
        problems.append(f"the Edge TPU part's parameters take {parameter_bytes / 2**20:.1f} MiB, over the ~8 MiB "
                        "on-chip cache: the rest streams from off-chip memory, which is slower")
    facts = {"parameter_bytes_on_tpu": parameter_bytes, "on_chip_bytes": ON_CHIP_BYTES,
             "refused": bool(dynamic) or graph.subgraphs > 1,
             "first_cpu_op": split.index if split is not None else None}
    return Compatibility(kind, f"Edge TPU compiler {target.toolchain.version}", "Edge TPU", tuple(ops),
                         tuple(problems), facts)


def compile_script(artifact: str) -> str:
    """The shell script that compiles ``artifact`` (a path in the bundle) where the compiler is installed: with
    the flags Ultralytics' Edge TPU export uses (one segment, searching for a compilable part when the whole
    fails), log kept beside the model."""
    return f"""#!/bin/sh
# Compile the int8 model for the Edge TPU. edgetpu_compiler runs on x86-64 Linux only; install it from Coral's
# apt repository (coral.ai/docs/edgetpu/compiler/):
#   curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /etc/apt/keyrings/coral.gpg
#   echo "deb [signed-by=/etc/apt/keyrings/coral.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main" \\
#     | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list
#   sudo apt-get update && sudo apt-get install -y edgetpu-compiler
# The pipeline's prediction of what maps is in compatibility.md beside this script; the compiler's own log is
# artifacts/*_edgetpu.log.
set -eu
cd "$(dirname "$0")"
[ "$(uname -m)" = x86_64 ] || {{ echo "edgetpu_compiler runs on x86-64 Linux only (this is $(uname -m))" >&2; exit 2; }}
command -v edgetpu_compiler >/dev/null || {{ echo "edgetpu_compiler is not installed: see the comment above" >&2; exit 2; }}
edgetpu_compiler --out_dir artifacts --show_operations --search_delegate --delegate_search_step 30 \\
  --timeout_sec 180 {artifact}
"""


register_toolchain(Toolchain(
    name="edgetpu-compiler", label="Edge TPU compiler", versions=("16",), formats=("tflite",), check=check,
    kinds=lambda kind: kind == "tflite-int8", grouped_conv=False, float_ops_in_int8=False,
    scripts=lambda artifacts, spec: {"compile_edgetpu.sh": compile_script(artifacts["tflite-int8"])}
    if "tflite-int8" in artifacts else {},
))
