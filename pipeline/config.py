"""The run configuration: one dataclass, read from a YAML file and overridden by command-line flags."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from board_runtime.registry import did_you_mean
from calibration import CalibrationOptions, OptionError

from .artifacts import plain_data, write_text
from .compress.options import CompressOptions
from .data.preprocess import PreprocessOptions
from .errors import ConfigError

# The bundle comes before bench: a board is benchmarked with the bundle as it is deployed.
STAGES = ("model", "compress", "export", "quantize", "convert", "evaluate", "bundle", "bench", "report")


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 6e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    hflip: bool = True  # Fashion-MNIST's garments are left-right symmetric
    seed: int = 0
    train_subset: int | None = None  # train on a random subset (tests, quick tries)


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ComputeOptions:
    """Where teacher training, block-wise distillation and fine-tuning run (``pipeline.compute`` resolves it)."""

    device: str = "auto"  # auto: the first CUDA device where there is one, else the CPU
    precision: str = "auto"  # auto: mixed precision where the device has it

    def __post_init__(self):
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"compute.device: bad value {self.device!r}, expected auto, cpu, cuda or cuda:N")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"compute.precision: bad value {self.precision!r}, expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class BenchOptions:
    runs: int = 1000  # sub-millisecond models need many runs for a stable p99
    warmup: int = 50
    max_seconds: float = 20.0  # per repeat: a slow board stops timing here (after at least 10 runs)
    repeats: int = 3  # fresh processes per artifact; the report gives the median of their statistics
    noise_threshold: float = 0.1  # flag an artifact whose repeats' medians spread wider than this
    host: str | None = None  # user@board: benchmark there over SSH instead of on this machine
    ssh_port: int | None = None
    ssh_identity: str | None = None  # private key file
    ssh_known_hosts: str | None = None  # a known_hosts file; new host keys are accepted and recorded
    remote_python: str = "python3"  # the board's interpreter (with numpy and the runtimes)
    install: bool = False  # first install the runtimes the bundle needs on the board, with the profile's commands
    timeout_s: float = 1800.0  # for the whole remote benchmark

    def __post_init__(self):
        for name in ("runs", "warmup", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
                raise ConfigError(f"bench.{name}: bad value {value!r}, expected an integer >= "
                                  f"{0 if name == 'warmup' else 1}")
        if not 0 < self.noise_threshold < 10:
            raise ConfigError(f"bench.noise_threshold: bad value {self.noise_threshold!r}, expected a ratio such as 0.1")


class Task(str, Enum):
    """What the model's outputs mean: class logits, or a detector's tensors that its decoder turns into boxes."""

    CLASSIFY = "classify"
    DETECT = "detect"


@dataclass(frozen=True)
class RunConfig:
    targets: tuple[str, ...] = ("raspberry-pi-4",)
    model: str = "fmnist-resnet"
    task: Task | None = None  # None: the built-in model's own, else classify
    # a detector's decoder and its options (``board_runtime.detection``): {"decoder": "ssd", "anchors": [...], ...};
    # None: the built-in model's own
    detect: dict | None = None
    weights: str | None = None
    data: str | None = None  # None: Fashion-MNIST from the Debian package
    out: str = "out"
    image_size: tuple[int, int] | None = None  # squash image-folder data to (H, W) (without preprocess resize/crop)
    input_shape: tuple[int, ...] | None = None  # the model's NCHW input, for a file whose dims are dynamic
    artifact_only: bool = False  # the model file as it is: benchmarked (and evaluated with data), no other artifact
    tflite_pseudo_ops: tuple[str, ...] = ()  # ONNX ops onnx2tf writes as builtin approximations (its -rtpo)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)  # the model's, where it carries none
    labels: str | None = None  # the model's class names in output order (a text or JSON file); the data maps onto them
    eval_samples: int | None = None  # evaluate on a random subset of the held-out split (None: all)
    parity_atol: float = 1e-3  # max |logit| difference allowed between ONNX fp32 and PyTorch
    train: TrainOptions = field(default_factory=TrainOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    bench: BenchOptions = field(default_factory=BenchOptions)
    compress: CompressOptions = field(default_factory=CompressOptions)
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    force: bool = False
    from_stage: str | None = None

    def __post_init__(self):
        if self.task is not None:
            try:
                object.__setattr__(self, "task", Task(self.task))
            except ValueError:
                raise ConfigError(f"task: bad value {self.task!r}, expected one of "
                                  f"{', '.join(t.value for t in Task)}") from None
        if self.detect is not None:
            from board_runtime.detection import check_options

            if not isinstance(self.detect, dict):
                raise ConfigError(f"detect: bad value {self.detect!r}, expected a mapping such as {{decoder: yolo}}")
            try:
                check_options(self.detect)
            except ValueError as exc:
                raise ConfigError(f"detect: {exc}") from None
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip()))
        if not self.targets:
            raise ConfigError("targets: at least one target is needed")
        if self.from_stage is not None and self.from_stage not in STAGES:
            raise ConfigError(f"from_stage: bad value {self.from_stage!r}, expected one of {', '.join(STAGES)}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))
        ops = self.tflite_pseudo_ops.split(",") if isinstance(self.tflite_pseudo_ops, str) else self.tflite_pseudo_ops
        object.__setattr__(self, "tflite_pseudo_ops", tuple(op.strip() for op in ops if op.strip()))
        unknown = [op for op in self.tflite_pseudo_ops if op not in PSEUDO_OPERATORS]
        if unknown:
            raise ConfigError(f"tflite_pseudo_ops: bad value {unknown[0]!r}, expected some of "
                              f"{', '.join(PSEUDO_OPERATORS)}")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _nchw(self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe data: enums as their values, tuples as lists."""
        return plain_data(self)


# The operators onnx2tf can write as builtin approximations (``-rtpo``, onnx2tf 1.29).
PSEUDO_OPERATORS = ("Asin", "Acos", "Atan", "Abs", "PReLU", "LeakyReLU", "Power", "GatherND", "Neg", "HardSwish", "Erf",
                    "GeLU", "MatMulInteger")


def _nchw(value: Any) -> tuple[int, ...]:
    """``1,3,224,224`` (a flag), [1, 3, 224, 224] or [3, 224, 224] -> (1, C, H, W)."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        dims = tuple(int(d) for d in parts)
    except (TypeError, ValueError):
        dims = ()
    dims = (1, *dims) if len(dims) == 3 else dims
    if len(dims) != 4 or dims[0] != 1 or min(dims) < 1:
        raise ConfigError(f"input_shape: bad value {value!r}, expected N,C,H,W with batch 1, such as 1,3,224,224")
    return dims


_NESTED = {"train": TrainOptions, "calibration": CalibrationOptions, "bench": BenchOptions,
           "compress": CompressOptions, "preprocess": PreprocessOptions, "compute": ComputeOptions}


def _typed(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: field '{where}': bad value {data!r}, expected a mapping")
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise ConfigError(f"{source}: unknown field '{where}{key}'{did_you_mean(key, valid)}; valid fields: "
                              f"{', '.join(valid)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{source}: field '{where.rstrip('.') or '<top level>'}': {exc}") from exc
    except (ConfigError, OptionError) as exc:  # a section's own check names the field and the value; add the file
        raise ConfigError(f"{source}: {exc}") from exc


def build_config(file: str | Path | None = None, **overrides: Any) -> RunConfig:
    """The configuration from ``file`` (YAML), then ``overrides`` (None values are ignored).

    Nested sections can be overridden key by key: ``build_config(train={"epochs": 1})``.
    """
    data: dict[str, Any] = {}
    source = str(file) if file else "<options>"
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options at the top level")
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key, {}), dict):  # a section: merged key by key
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    for key, cls in _NESTED.items():
        if key in data:
            data[key] = _typed(cls, data[key], f"{key}.", source)
    config = _typed(RunConfig, data, "", source)
    return config


def save_config(config: RunConfig, path: Path) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
