"""onnx-fp32: the model exported to ONNX with static shapes, simplified, checked, and compared with PyTorch on real
inputs. The other ONNX kinds and the TFLite kinds are made from it."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AccuracyError, ConversionError
from ..onnxmodel import INPUT_NAME, OUTPUT_NAME
from .registry import Format, float_io, register_format



def export_onnx(model, input_shape: tuple[int, ...], path: Path, opset: int,
                output_names: list[str] | tuple[str, ...] = (OUTPUT_NAME,)) -> None:
    """Write ``model`` as a simplified, checked ONNX file with a static ``input_shape``."""
    import onnx
    import torch

    example = torch.zeros(input_shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: it needs no onnxscript and gives plain static graphs for CNNs.
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(output_names), do_constant_folding=True,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name}: ONNX export at opset {opset} failed: {first}") from exc
    graph = onnx.load(str(path))
    try:
        from onnxsim import simplify

        simplified, ok = simplify(graph)
        if ok:
            graph = simplified
    except Exception as exc:  # simplification is an optimisation; an unsimplified graph is still correct
        warnings.warn(f"onnxsim could not simplify {path.name}: {exc}")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{path.name}: onnx.checker rejected the exported graph: {str(exc).splitlines()[0]}") from exc
    onnx.save(graph, str(path))


def onnx_parity(reference: Callable[[np.ndarray], list[np.ndarray]], path: Path, inputs: np.ndarray,
                atol: float) -> float:
    """Max absolute difference, over every output, between ``reference`` (a function of a numpy batch giving the
    outputs in order) and onnxruntime on ``path``, sample by sample; raise beyond ``atol``, naming the output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = {name: 0.0 for name in names}
    for sample in inputs:
        for name, want, got in zip(names, reference(sample[None]), session.run(None, {INPUT_NAME: sample[None]})):
            worst[name] = max(worst[name], float(np.abs(want - got).max()))
    name = max(worst, key=lambda n: worst[n] if worst[n] == worst[n] else float("inf"))
    if not worst[name] <= atol:  # also catches NaN
        raise AccuracyError(f"{path.name}: ONNX output '{name}' differs from the model by {worst[name]:.3g} (max abs), "
                            f"over the tolerance {atol:g}")
    return worst[name]


PARITY_SAMPLES = 64


def parity_inputs(plan) -> np.ndarray:
    """Held-out images as the model takes them; seeded noise of its input's shape for a file given without data."""
    if plan.data is None:
        shape = (PARITY_SAMPLES, *plan.model_record["data"]["input_shape"][1:])
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return plan.preprocess().apply(plan.data.test.take(PARITY_SAMPLES).read())


def _from_torch(plan, path: Path, opset: int) -> float:
    """Export the PyTorch model; the worst logit difference against it."""
    import torch

    model = plan.load_torch()
    data = plan.model_record["data"]
    export_onnx(model, tuple(data["input_shape"]), path, opset, data.get("output_names", [OUTPUT_NAME]))

    def reference(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return onnx_parity(reference, path, parity_inputs(plan), plan.config.parity_atol)


def _from_onnx(plan, path: Path, opset: int) -> float:
    """The user's graph (as the model step prepared it) at the target's opset; the worst difference against it."""
    import onnx
    import onnxruntime as ort

    source = plan.path(plan.model_record, "onnx")
    model = onnx.load(str(source))
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        try:
            model = onnx.version_converter.convert_version(model, opset)
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:
            raise ConversionError(f"{plan.config.model}: cannot convert opset {current} to {opset} "
                                  f"({str(exc).splitlines()[0][:200]})") from exc
    onnx.save(model, str(path))
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    return onnx_parity(lambda x: original.run(None, {INPUT_NAME: x}), path, parity_inputs(plan),
                       plan.config.parity_atol)


# How the ONNX fp32 artifact is made from each framework a model source can be in.
FROM_FRAMEWORK = {"torch": _from_torch, "onnx": _from_onnx}


def build(plan, target) -> tuple[dict, str]:
    opset = target.onnx_opset

    def produce(tmp: Path) -> dict:
        worst = FROM_FRAMEWORK[plan.source.row.framework](plan, tmp / "model.onnx", opset)
        return {"files": {"onnx": "model.onnx"}, "parity_max_abs": worst, "opset": opset}

    record = plan.shared_step(f"export-opset{opset}", "export", {"opset": opset, "atol": plan.config.parity_atol},
                              [plan.model_record], produce)
    return record, "onnx"


register_format(Format(kind="onnx-fp32", format="onnx", precision="fp32", label="ONNX fp32", stage="export",
                       session="onnx", runtimes=("onnxruntime", "onnxruntime-cuda"), build=build, io=float_io))
