"""Artifact kinds as a registry of rows (``registry.Format``). Importing this package registers the built-in
kinds, one module each, in the order reports list them; nothing heavy is imported until a kind is built."""
from . import torch_fp32, onnx_fp32, onnx_fp16, onnx_int8, tflite  # noqa: F401  (each registers its rows)
from .registry import FORMATS, Format, get_format, register_format

__all__ = ["FORMATS", "Format", "get_format", "register_format"]
