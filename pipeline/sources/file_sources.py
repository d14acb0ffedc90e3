"""Files for other frameworks as the model. An ONNX file (``--model net.onnx``) is the reference (onnx-fp32): the other
artifacts are made from it. A TensorFlow Lite file (``--model net.tflite``) is benchmarked, and evaluated with data,
as it is: nothing can be made from it. Compression, which needs a torch module, is skipped for both."""
from __future__ import annotations

from pathlib import Path

from .registry import ModelSource, SourceKind, not_a_module, register_source


def _static_hw(dims: list[int | None]) -> tuple[int, int] | None:
    return (int(dims[0]), int(dims[1])) if len(dims) == 2 and all(dims) else None


def _onnx_input_hw(source: ModelSource) -> tuple[int, int] | None:
    from ..onnxmodel import declared_shape

    return _static_hw(declared_shape(Path(source.model), detector=True)[2:])


def _tflite_input_hw(source: ModelSource) -> tuple[int, int] | None:
    from ai_edge_litert.interpreter import Interpreter

    shape = [int(d) for d in Interpreter(model_path=source.model).get_input_details()[0]["shape"]]
    return _static_hw(shape[1:3] if len(shape) == 4 and shape[3] in (1, 3) else shape[2:])


def _onnx_card(source: ModelSource):
    from .model_card import onnx_card

    return onnx_card(Path(source.model))


register_source(SourceKind("onnx", lambda model: model.endswith(".onnx"), not_a_module("an ONNX file"),
                           usage="an ONNX (.onnx) file", reference_kind="onnx-fp32", framework="onnx",
                           input_hw=_onnx_input_hw, card=_onnx_card))
register_source(SourceKind("tflite", lambda model: model.endswith(".tflite"), not_a_module("a TensorFlow Lite file"),
                           usage="a TensorFlow Lite (.tflite) file", reference_kind="tflite-fp32", framework="tflite",
                           derives=False, input_hw=_tflite_input_hw))
