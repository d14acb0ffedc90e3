"""Embedded deployment toolchain: a trained PyTorch CNN to benchmarked ONNX and TFLite artifacts per board."""
from importlib import import_module

# Loaded on first use, so that importing a submodule (e.g. ``pipeline.errors`` from ``calibration``) does not
# pull in the whole pipeline, which itself imports ``calibration``.
_EXPORTS = {
    "STAGES": "config", "RunConfig": "config", "build_config": "config", "PipelineError": "errors",
    "Run": "orchestrator", "run": "orchestrator", "TargetProfile": "targets", "list_targets": "targets",
    "load_target": "targets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
