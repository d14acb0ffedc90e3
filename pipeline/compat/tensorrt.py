"""TensorRT's row: whether the ONNX parser of a board's TensorRT takes an ONNX artifact, and whether its Q/DQ nodes
are the explicit quantization TensorRT builds.

Op tables: onnx/onnx-tensorrt ``docs/operators.md`` at the parser commit each TensorRT release pins, each op checked
against the parser's importers (8.2 documents Reciprocal as unsupported but imports it). The 10.3 parser (JetPack
6.1/6.2) adds no op to 10.1's (its changelog). Q/DQ rules: the parser's QuantDequantLinear importer and ``NvInfer.h``
(IQuantizeLayer): zero points all 0 ("TRT only supports symmetric quantization"), INT8 data (8.5 and later reject
UINT8; DequantizeLinear takes INT8 only, so no INT32 bias), per-channel scales only on constant weights along their
output channels (axis 0), activations per tensor, and a GPU with int8 ("Networks with QuantizeLayer/DequantizeLayer
layers require hardware with Int8 support": not the Jetson Nano's Maxwell). Engines are built on the board, whose
GPU the builder needs: the bundle's ``build_engines.sh`` runs trtexec there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import ACCELERATED, REFUSED, Compatibility, OpPlacement, Toolchain, register_toolchain

TRT_82 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual HardSigmoid Identity If ImageScaler InstanceNormalization
IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean Min
Mul Neg NonMaxSuppression Not Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where""".split())
TRT_85 = TRT_82 | set("GridSample HardSwish MeanVarianceNormalization Mod NonZero OneHot RandomNormal "
                      "RandomNormalLike RoiAlign Shrink Trilu Xor".split())
TRT_86 = TRT_85 | {"GroupNormalization", "IsInf", "LayerNormalization"}
TRT_10 = TRT_86 | {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"}


@dataclass(frozen=True)
class Parser:
    ops: frozenset[str]
    max_opset: int  # "TensorRT 8.2 supports operators up to Opset 13" (operators.md)
    zero_point_required: bool  # 8.2 and 8.5: "requires 3 inputs for the DequantizeLinear operator"


PARSERS = {"8.2": Parser(TRT_82, 13, True), "8.5": Parser(TRT_85, 17, True), "8.6": Parser(TRT_86, 17, False),
           "10.3": Parser(TRT_10, 20, False)}

# What to change for the ops CNN exports meet that an older parser lacks.
REMEDIES = {
    "HardSwish": "export at opset 13 or lower, where PyTorch writes hard-swish as HardSigmoid and Mul",
    "LayerNormalization": "export at opset 16 or lower, where PyTorch writes it as reductions",
    "Gelu": "export at opset 19 or lower, where PyTorch writes GELU with Erf",
}


WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 0}  # the per-channel axis TensorRT's kernels assume (KCRS; deconv too)


def qdq_problems(model) -> dict[int, tuple[str, str]]:
    """Per Q/DQ node index, why TensorRT does not take it and what to change; empty for a conforming model."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = constants.get(node.input[1])
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        data = constants.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        why, change = "", ""
        if data is not None and data.dtype.name == "int32":
            why, change = ("dequantizes an INT32 tensor (a quantized bias); TensorRT's DequantizeLinear takes INT8 only",
                           "keep biases in float (ONNX Runtime's QuantizeBias=False, which this pipeline sets for "
                           "TensorRT targets)")
        elif zero_point is not None and zero_point.dtype.name == "uint8":
            why, change = "UINT8 quantization; TensorRT takes INT8 only", "quantize activations to int8, symmetric"
        elif zero_point is not None and zero_point.any():
            why, change = ("zero point not 0; TensorRT only supports symmetric quantization",
                           "quantize symmetrically (activation_symmetric: true in the profile)")
        elif scale is None:
            why, change = "its scale is not a constant", "fold the scale into an initializer"
        elif (scale <= 0).any():
            why, change = "a scale is not positive", "recalibrate"
        elif scale.size > 1:
            users = [c.op_type for c in consumers.get(node.output[0], [])]
            if data is None:
                why, change = ("per-channel scales on an activation; TensorRT quantizes activations per tensor",
                               "quantize activations per tensor")
            elif any(u in WEIGHT_AXIS and axis % data.ndim != WEIGHT_AXIS[u] for u in users):
                why, change = (f"per-channel along axis {axis}; TensorRT takes weights per output channel (axis 0)",
                               "quantize the weights along axis 0")
        if why:
            found[index] = (why, change)
    return found


def check(path: Path, kind: str, target) -> Compatibility:
    import onnx

    spec = target.toolchain
    parser = PARSERS[spec.version]
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    qdq = qdq_problems(model)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    label = f"TensorRT {spec.version} ONNX parser" + (f" (JetPack {spec.platform})" if spec.platform else "")
    ops = []
    for index, node in enumerate(model.graph.node):
        layer = node.output[0] if node.output else node.name
        if node.domain not in ("", "ai.onnx"):
            ops.append(OpPlacement(index, f"{node.domain}.{node.op_type}", layer, REFUSED,
                                   f"an op of domain {node.domain}, which TensorRT's parser has no importer for",
                                   "export with standard ONNX ops"))
        elif node.op_type not in parser.ops:
            ops.append(OpPlacement(index, node.op_type, layer, REFUSED,
                                   f"TensorRT {spec.version}'s ONNX parser has no importer for {node.op_type}",
                                   REMEDIES.get(node.op_type, "replace that layer with ops the parser takes")))
        elif index in qdq:
            ops.append(OpPlacement(index, node.op_type, layer, REFUSED, *qdq[index]))
        elif parser.zero_point_required and node.op_type in ("QuantizeLinear", "DequantizeLinear") and \
                (len(node.input) < 3 or not node.input[2]):
            ops.append(OpPlacement(index, node.op_type, layer, REFUSED,
                                   f"TensorRT {spec.version} requires the zero-point input", "give it a zero point of 0"))
        else:
            ops.append(OpPlacement(index, node.op_type, layer, ACCELERATED))
    problems, refused = [], False
    if opset > parser.max_opset:
        refused = True
        problems.append(f"opset {opset}: TensorRT {spec.version}'s parser supports operators up to opset "
                        f"{parser.max_opset}; export at opset {parser.max_opset} (the profile's onnx_opset)")
    if has_qdq and not spec.int8:
        refused = True
        problems.append(f"Q/DQ int8 needs a GPU with int8 (TensorRT: 'Networks with QuantizeLayer/DequantizeLayer "
                        f"layers require hardware with Int8 support'), which the {target.board.accelerator} lacks: "
                        f"this model runs on the board's CPU with ONNX Runtime; use the fp16 engine on its GPU")
    facts = {"opset": opset, "max_opset": parser.max_opset, "refused": refused, "qdq_conforming": has_qdq and not qdq}
    return Compatibility(kind, label, "GPU (TensorRT)", tuple(ops), tuple(problems), facts)


# trtexec flags per artifact kind: (engine name, precision flags); the fp32 export also gets an fp16 engine.
ENGINES = {"onnx-fp32": [("fp32", ""), ("fp16", "--fp16")], "onnx-fp16": [("fp16", "--fp16")],
           "onnx-int8": [("int8", "--int8 --fp16")]}


def engines_script(artifacts: dict[str, str], int8: bool) -> str:
    """build_engines.sh: a TensorRT engine per ONNX artifact, built and timed by trtexec on the board."""
    lines = []
    for kind, path in artifacts.items():
        for name, flags in ENGINES.get(kind, []):
            if name == "int8" and not int8:
                lines.append(f"# {kind}: no engine, this GPU has no int8 (it runs with ONNX Runtime on the CPU)")
                continue
            lines.append(f"build {path} {kind}.{name} {flags}".rstrip())
    body = "\n".join(lines)
    return f"""#!/bin/sh
# Build a TensorRT engine from each ONNX artifact and time it with trtexec, on the board (the builder needs its
# GPU; an engine is specific to the GPU and the TensorRT version that built it). Engines, logs and per-run times
# (--exportTimes, JSON) go to engines/; each log ends with trtexec's "Performance summary".
set -eu
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-/usr/src/tensorrt/bin/trtexec}}"
[ -x "$TRTEXEC" ] || {{ echo "trtexec not found at $TRTEXEC (JetPack puts it in /usr/src/tensorrt/bin)" >&2; exit 2; }}
mkdir -p engines
build() {{
  onnx="$1"; name="$2"; shift 2
  "$TRTEXEC" --onnx="$onnx" --saveEngine="engines/$name.engine" --warmUp=500 --duration=5 \\
    --exportTimes="engines/$name.times.json" "$@" > "engines/$name.log" 2>&1 \\
    || {{ echo "$name: trtexec failed, see engines/$name.log" >&2; return 1; }}
  echo "$name:"; grep -E "Throughput:|Latency: min|GPU Compute Time:" "engines/$name.log" || true
}}
{body}
"""


register_toolchain(Toolchain(
    name="tensorrt", label="TensorRT", versions=tuple(PARSERS), formats=("onnx",), check=check,
    max_opset=lambda version: PARSERS[version].max_opset, quantized_bias=False,
    scripts=lambda artifacts, spec: {"build_engines.sh": engines_script(artifacts, spec.int8)},
))
