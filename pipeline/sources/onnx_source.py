"""An ONNX file as the model (``--model net.onnx``): the graph is the reference (onnx-fp32); the other artifacts are
made from it, and compression, which needs a torch module, is skipped."""
from __future__ import annotations

from ..errors import ModelError
from .registry import ModelSource, SourceKind, register_source


def _not_a_module(source: ModelSource, in_channels: int, num_classes: int):
    raise ModelError(f"{source.model}: an ONNX file is not a PyTorch module; this step needs one")


register_source(SourceKind("onnx", lambda model: model.endswith(".onnx"), _not_a_module, usage="an ONNX (.onnx) file",
                           reference_kind="onnx-fp32", framework="onnx"))
