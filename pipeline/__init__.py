"""Embedded deployment toolchain: a trained PyTorch CNN to benchmarked ONNX and TFLite artifacts per board."""
from .config import STAGES, RunConfig, build_config
from .errors import PipelineError
from .orchestrator import Run, run
from .targets import TargetProfile, list_targets, load_target

__all__ = ["STAGES", "PipelineError", "Run", "RunConfig", "TargetProfile", "build_config", "list_targets",
           "load_target", "run"]
