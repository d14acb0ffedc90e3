"""Files for other frameworks as the model. An ONNX file (``--model net.onnx``) is the reference (onnx-fp32): the other
artifacts are made from it. A TensorFlow Lite file (``--model net.tflite``) is benchmarked, and evaluated with data,
as it is: nothing can be made from it. Compression, which needs a torch module, is skipped for both."""
from __future__ import annotations

from .registry import SourceKind, not_a_module, register_source

register_source(SourceKind("onnx", lambda model: model.endswith(".onnx"), not_a_module("an ONNX file"),
                           usage="an ONNX (.onnx) file", reference_kind="onnx-fp32", framework="onnx"))
register_source(SourceKind("tflite", lambda model: model.endswith(".tflite"), not_a_module("a TensorFlow Lite file"),
                           usage="a TensorFlow Lite (.tflite) file", reference_kind="tflite-fp32", framework="tflite",
                           derives=False))
