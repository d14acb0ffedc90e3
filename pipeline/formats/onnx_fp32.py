"""onnx-fp32: the model exported to ONNX with static shapes, simplified, checked, and compared with PyTorch on real
inputs. The other ONNX kinds and the TFLite kinds are made from it."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import AccuracyError, ConversionError
from .registry import Format, float_io, register_format

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model, input_shape: tuple[int, ...], path: Path, opset: int) -> None:
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
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
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


def onnx_parity(model, path: Path, inputs: np.ndarray, atol: float) -> float:
    """Max absolute logit difference between PyTorch and onnxruntime on ``inputs``; raise beyond ``atol``."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for sample in inputs:
            expected = model(torch.from_numpy(sample[None])).numpy()
            got = session.run(None, {INPUT_NAME: sample[None]})[0]
            worst = max(worst, float(np.abs(expected - got).max()))
    if not worst <= atol:  # also catches NaN
        raise AccuracyError(
            f"{path.name}: ONNX output differs from PyTorch by {worst:.3g} (max abs logit), over the tolerance {atol:g}"
        )
    return worst


PARITY_SAMPLES = 64


def build(plan, target) -> tuple[dict, str]:
    opset = target.onnx_opset

    def produce(tmp: Path) -> dict:
        model = plan.load_torch()
        path = tmp / "model.onnx"
        export_onnx(model, tuple(plan.model_record["data"]["input_shape"]), path, opset)
        worst = onnx_parity(model, path, plan.preprocess().apply(plan.data.test.take(PARITY_SAMPLES).images),
                            plan.config.parity_atol)
        return {"files": {"onnx": "model.onnx"}, "parity_max_abs": worst, "opset": opset}

    record = plan.shared_step(f"export-opset{opset}", "export", {"opset": opset, "atol": plan.config.parity_atol},
                              [plan.model_record], produce)
    return record, "onnx"


register_format(Format(kind="onnx-fp32", format="onnx", precision="fp32", label="ONNX fp32", stage="export",
                       session="onnx", runtimes=("onnxruntime", "onnxruntime-cuda"), build=build, io=float_io))
