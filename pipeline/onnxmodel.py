"""A user's ONNX file as the model: its one image input fixed to the data's static shape, its weights folded into
initializers (some zoos keep them as Constant or ConstantOfShape nodes), checked, run once, and counted."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import ModelError, not_logits

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # as the pipeline's own exports name them


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # a damaged file raises protobuf's DecodeError, OSError or others
        raise ModelError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from exc


def image_input(model, path: Path, detector: bool = False):
    """The graph's one image input (older exporters also list the weights among the inputs); a classifier has one
    output, a detector any number."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1 or (len(model.graph.output) != 1 and not detector):
        hint = "; a detector's outputs are read by its decoder: give --task detect" if len(inputs) == 1 else ""
        raise ModelError(f"{path}: expected one input and one output, found {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}) and {len(model.graph.output)} outputs{hint}")
    return inputs[0]


def declared_shape(path: Path, detector: bool = False) -> list[int | None]:
    """The image input's dims as the file declares them, None where a dim is dynamic."""
    dims = image_input(_load(path), path, detector).type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def fix_and_fold(path: Path, shape: tuple[int, ...], out: Path, detector: bool = False) -> None:
    """Write ``path`` with its input fixed to ``shape`` (NCHW), input (and a classifier's output) renamed as the
    pipeline names them, constants folded into initializers and the graph simplified; a one-line error when the
    shapes disagree. A detector's outputs keep their names: its decoder may name them."""
    import onnx
    from onnxsim import simplify

    model = _load(path)
    value = image_input(model, path, detector)
    dims = value.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(declared) != len(shape) or any(d is not None and d != s for d, s in zip(declared[1:], shape[1:])):
        printable = [d if d is not None else "?" for d in declared]
        raise ModelError(f"{path}: input '{value.name}' is {printable}, the data gives {list(shape)} (NCHW); resize "
                         "or crop the images to the model's size (--resize/--crop)")
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = size
    _rename(model, value.name, INPUT_NAME)
    if not detector:
        _rename(model, model.graph.output[0].name, OUTPUT_NAME)
    weights = {t.name for t in model.graph.initializer}  # older exporters list them as inputs too: not constants then
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # IR 4 is where initializers stopped having to be inputs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, ok = simplify(model)
            model = model if detector else _flatten_output(model)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot prepare the graph ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from exc
    if not ok:
        raise ModelError(f"{path}: onnxsim could not check the simplified graph against the original")
    onnx.save(model, str(out))


def _flatten_output(model):
    """[1, K, 1, 1] (a classifier converted from Caffe, say) -> [1, K]: the logits every runtime here reads."""
    import onnx

    output = onnx.shape_inference.infer_shapes(model).graph.output[0]
    dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
    if len(dims) <= 2 or any(d != 1 for d in dims[2:]):
        return model
    _rename(model, OUTPUT_NAME, "unflattened_logits")
    model.graph.node.append(onnx.helper.make_node("Flatten", ["unflattened_logits"], [OUTPUT_NAME], axis=1))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT_NAME, output.type.tensor_type.elem_type,
                                                                 dims[:2]))
    return model


def _rename(model, old: str, new: str) -> None:
    if old == new:
        return
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if value.name == old:
            value.name = new


def run_outputs(path: Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Every output of one inference on zeros."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.zeros(shape, np.float32)})


def run_once(path: Path, shape: tuple[int, ...], num_classes: int | None, name: str) -> int:
    """One inference on zeros: the output must be [1, num_classes] logits (or probabilities), or any [1, K] when the
    classes are not known; returns K."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {INPUT_NAME: np.zeros(shape, np.float32)})[0]
    if num_classes is not None and out.shape != (1, num_classes):
        raise not_logits(name, list(out.shape), num_classes)
    if out.ndim != 2 or out.shape[0] != 1:
        raise ModelError(f"{name}: output {list(out.shape)} is not [1, K] logits")
    return int(out.shape[1])


def output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path)).graph.output]


def count(path: Path) -> tuple[int, int]:
    """Parameters (initializer elements) and FLOPs of one inference, a multiply-add counting as 2 as torch's counter
    does; only Conv, Gemm and MatMul are counted, which is where a CNN's arithmetic is."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    flops = 0
    for node in graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type == "Conv":  # weight [Cout, Cin / groups, kh, kw]: each output takes Cin/groups * kh * kw MACs
            flops += 2 * int(np.prod(out)) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            first = shapes.get(node.input[0]) or [0]
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            flops += 2 * int(np.prod(out)) * (first[-2] if transposed else first[-1])
    return sum(int(np.prod(t.dims)) for t in graph.initializer), flops


def has_grouped_conv(path: Path) -> bool:
    """Whether a Conv has groups that are neither one nor one per channel (weight [Cout, Cin / groups, kh, kw] with
    Cin / groups > 1), the kind some accelerators' compilers refuse; a weight computed at run time counts as one."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and weights.get(node.input[1], [0, 0])[1] != 1:
            return True
    return False


def onnx_output_shapes(path: Path) -> list[list[int]]:
    import onnx

    graph = onnx.load(str(path)).graph
    return [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output]
