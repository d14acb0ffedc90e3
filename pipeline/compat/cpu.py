"""The CPU runtimes' row: what a board without an accelerator toolchain runs, and every artifact an accelerator's
toolchain does not take (a Coral's float TFLite, say).

For a TFLite file the placement is read from LiteRT itself, not from a table: the interpreter applies its XNNPACK
delegate as the boards' runtimes do by default, and an op outside the delegate's partitions runs on LiteRT's
built-in kernels, which are slower. ONNX Runtime's CPU provider runs every standard op; loading the file is the
check.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..tflite_file import read_graph
from .base import ACCELERATED, CPU, Compatibility, OpPlacement, Toolchain, register_toolchain

XNNPACK = "CPU (XNNPACK)"


def _delegated(interpreter) -> set[int]:
    """The indices of the nodes that LiteRT handed to a delegate: per DELEGATE node, those that compute its
    outputs from its inputs."""
    details = interpreter._get_ops_details()
    producer = {int(t): d["index"] for d in details if d["op_name"] != "DELEGATE" for t in d["outputs"]}
    inputs_of = {d["index"]: [int(t) for t in d["inputs"] if t >= 0] for d in details}
    taken: set[int] = set()
    for delegate in (d for d in details if d["op_name"] == "DELEGATE"):
        stop = {int(t) for t in delegate["inputs"]}
        pending = [int(t) for t in delegate["outputs"]]
        while pending:
            tensor = pending.pop()
            node = producer.get(tensor)
            if tensor in stop or node is None or node in taken:
                continue
            taken.add(node)
            pending += inputs_of[node]
    return taken


def check_tflite(path: Path, kind: str) -> Compatibility:
    from ai_edge_litert.interpreter import Interpreter

    graph = read_graph(path)
    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{path}: LiteRT cannot load it: {str(exc).splitlines()[0][:200]}") from exc
    taken = _delegated(interpreter)
    ops = tuple(
        OpPlacement(op.index, f"{op.name} v{op.version}", op.layer, ACCELERATED) if op.index in taken else
        OpPlacement(op.index, f"{op.name} v{op.version}", op.layer, CPU,
                    "outside the XNNPACK delegate's partitions: LiteRT's built-in kernel runs it",
                    "usually slower than XNNPACK; fine for ops that do little work")
        for op in graph.ops)
    return Compatibility(kind, "LiteRT with XNNPACK (the CPU runtime's default)", XNNPACK, ops,
                         elsewhere="CPU with LiteRT's built-in kernels")


def check_onnx(path: Path, kind: str) -> Compatibility:
    import onnx
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise ModelError(f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:200]}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = tuple(OpPlacement(i, node.op_type, node.output[0] if node.output else node.name, ACCELERATED)
                for i, node in enumerate(graph.node))
    return Compatibility(kind, "ONNX Runtime (CPU execution provider)", "CPU", ops)


CHECKS = {"tflite": check_tflite, "onnx": check_onnx}

register_toolchain(Toolchain(
    name="cpu", label="the CPU runtimes (LiteRT, ONNX Runtime)", versions=("any",), formats=tuple(CHECKS),
    check=lambda path, kind, target: CHECKS[Path(path).suffix.lstrip(".")](Path(path), kind),
))
