"""What a target profile holds, as typed data: the board, its runtimes and artifacts, the int8 scheme, budgets.

``pipeline.targets`` reads and validates the YAML files into these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


from calibration.weights import Int8Granularity  # noqa: F401  (a profile's int8 scheme names it)

from .artifacts import plain_data


class IODtype(str, Enum):
    FLOAT32 = "float32"
    INT8 = "int8"
    UINT8 = "uint8"


class Layout(str, Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"


@dataclass(frozen=True)
class Board:
    cpu_arch: str
    cpu: str
    cores: int
    memory_mb: int
    accelerator: str


@dataclass(frozen=True)
class Int8Scheme:
    """How int8 artifacts are built for a board."""

    granularity: Int8Granularity
    io_dtype: IODtype  # input/output dtype of the TFLite int8 model
    activation_symmetric: bool  # TensorRT wants zero-point 0 on activations


@dataclass(frozen=True)
class Budgets:
    max_flops: int | None
    max_params: int | None
    max_model_size_mb: float | None


@dataclass(frozen=True)
class DetectionTolerance:
    """What a detector's artifact may lose against the reference, in points."""

    map50_95: float  # of mAP50-95 against the labels
    reference_map50: float  # of mAP50 against the reference's own detections (the gate where there are no labels)


@dataclass(frozen=True)
class PeakGops:
    """Giga-operations per second at each precision, on the compute path the board's artifacts of that
    precision run on (GPU, NPU or CPU); None where the board has no such path."""

    fp32: float | None
    fp16: float | None
    int8: float | None


@dataclass(frozen=True)
class Performance:
    """Theoretical peaks for roofline estimates (``pipeline.estimate``) and where they come from."""

    peak_gops: PeakGops
    memory_bandwidth_gbs: float
    source: str  # URL(s) of the specifications the figures come from, cited by the report


@dataclass(frozen=True)
class ToolchainSpec:
    """The board's own toolchain for its accelerator (``pipeline.compat.TOOLCHAINS``): the Edge TPU compiler,
    TensorRT; "cpu" for boards whose artifacts run on the CPU runtimes alone."""

    name: str = "cpu"
    version: str = "any"
    platform: str | None = None  # the board's software release that brings it (JetPack 4.6.1), for reports
    int8: bool = True  # the accelerator computes in int8 (the Jetson Nano's Maxwell GPU does not)


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    source: Path
    board: Board
    runtimes: tuple[str, ...]
    artifacts: tuple[str, ...]
    threads: int
    onnx_opset: int
    input_layout: Layout  # layout of the TFLite artifacts' input
    int8: Int8Scheme
    budgets: Budgets
    accuracy_tolerance: float  # top-1 points an artifact may lose against torch fp32
    detection_tolerance: DetectionTolerance
    # runtime -> the shell command that installs it on the board; a dict is unhashable, so kept out of the hash
    install: dict[str, str] = field(hash=False)
    performance: Performance | None  # None: no roofline estimates for this board
    toolchain: ToolchainSpec = ToolchainSpec()  # what the compatibility check predicts the board's placement with

    def to_dict(self) -> dict[str, Any]:
        return plain_data(self)
