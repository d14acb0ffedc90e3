"""Where a model comes from. Importing this package registers every source kind, in the order they are tried."""
from . import torch_sources  # noqa: F401  (built-in, factory, torch.export, TorchScript)
from . import file_sources, student  # noqa: F401
from .registry import SOURCES, ModelSource, SourceKind, build_model, register_source, resolve

__all__ = ["SOURCES", "ModelSource", "SourceKind", "build_model", "register_source", "resolve"]
