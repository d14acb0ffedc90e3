"""What a board's own toolchain will do with an artifact, predicted from the file before anything is copied: for
every operator, where it runs (accelerator or CPU), why not on the accelerator, and what to change.

A toolchain is a row of ``TOOLCHAINS`` (the Edge TPU compiler, TensorRT's ONNX parser, the CPU runtimes): the
versions it knows, the artifact formats it checks and the check itself. A target profile names its toolchain
and version (``toolchain:``); boards that name none get the CPU runtimes' row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from board_runtime.registry import Registry, did_you_mean

from ..errors import ConfigError

ACCELERATED, CPU, REFUSED = "accelerator", "CPU", "refused"


@dataclass(frozen=True)
class OpPlacement:
    index: int  # in the file's execution order
    op: str  # its type as the file names it, with its version where the format has one (CONV_2D v3, Conv)
    layer: str  # the tensor it writes, which converters name after the layer it came from
    runs_on: str  # ACCELERATED (the toolchain's own device), CPU, or REFUSED (the toolchain fails on it)
    why: str = ""  # why not on the accelerator; empty when it is
    change: str = ""  # what to change so that it is


@dataclass(frozen=True)
class Compatibility:
    kind: str  # the artifact kind checked
    toolchain: str  # as reports name it: "Edge TPU compiler 16", "TensorRT 8.2 ONNX parser (JetPack 4.6.1)"
    device: str  # what ACCELERATED means for it: "Edge TPU", "GPU", "CPU (XNNPACK)"
    ops: tuple[OpPlacement, ...]
    problems: tuple[str, ...] = ()  # whole-model findings (data types, shapes, opset, memory), each with its remedy
    facts: dict = field(default_factory=dict)  # figures the verdict rests on (parameter bytes, opset, ...)
    elsewhere: str = "CPU"  # what runs the ops off the device, as the verdict says it

    @property
    def refused(self) -> bool:
        """The toolchain fails on this file (refuses an op, or the whole model)."""
        return any(op.runs_on == REFUSED for op in self.ops) or bool(self.facts.get("refused"))

    def count(self, where: str) -> int:
        return sum(op.runs_on == where for op in self.ops)

    @property
    def verdict(self) -> str:
        total, on = len(self.ops), self.count(ACCELERATED)
        if self.refused:
            first = next((op for op in self.ops if op.runs_on == REFUSED), None)
            reason = f"{first.op} ({first.layer}): {first.why}" if first else self.problems[0]
            return f"REFUSED by {self.toolchain}: {reason}"
        if on == total:
            return f"all {total} ops on the {self.device}"
        first = next(op for op in self.ops if op.runs_on != ACCELERATED)
        return (f"{on} of {total} ops on the {self.device}, {total - on} on the {self.elsewhere}; the first that is "
                f"not: op {first.index} {first.op} ({first.why})")

    def to_json(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


Check = Callable[[Path, str, object], Compatibility]  # (artifact file, kind, target profile) -> its compatibility


@dataclass(frozen=True)
class Toolchain:
    name: str  # as a profile names it (``toolchain.name``)
    label: str  # as reports name it
    versions: tuple[str, ...]  # those whose tables are known here, oldest first
    formats: tuple[str, ...]  # the artifact file formats it takes (onnx, tflite)
    check: Check
    max_opset: Callable[[str], int | None] = lambda version: None  # the highest ONNX opset it parses, if bounded
    kinds: Callable[[str], bool] = lambda kind: True  # of its formats, the kinds it takes (Edge TPU: int8 only)
    grouped_conv: bool = True  # takes grouped convolutions (else the TFLite conversion writes none)
    quantized_bias: bool = True  # takes int32 biases in Q/DQ models (else ONNX int8 keeps biases in float)
    float_ops_in_int8: bool = True  # runs float ops inside an int8 model (else no mixed-precision fallback)
    # the board scripts the bundle carries: ({artifact kind: its path in the bundle}, the profile's ToolchainSpec)
    # -> {file name: shell script}
    scripts: Callable[[dict[str, str], object], dict[str, str]] = lambda artifacts, spec: {}


TOOLCHAINS: Registry[Toolchain] = Registry("toolchain")


def register_toolchain(row: Toolchain) -> Toolchain:
    return TOOLCHAINS.register(row.name, row)


def get_toolchain(name: str, version: str, source: Path) -> Toolchain:
    """The row of ``name``, checked to know ``version``; errors name the profile file, field and valid values."""
    if name not in TOOLCHAINS:
        raise ConfigError(f"{source}: field 'toolchain.name': bad value {name!r}{did_you_mean(name, TOOLCHAINS)}, "
                          f"expected one of {', '.join(TOOLCHAINS)}")
    row = TOOLCHAINS[name]
    if version not in row.versions:
        raise ConfigError(f"{source}: field 'toolchain.version': bad value {version!r}, expected one of "
                          f"{', '.join(row.versions)} (the {row.label} versions whose tables this tool has)")
    return row


def toolchain_of(profile) -> Toolchain:
    """The row that a target profile names (``toolchain:``; the CPU runtimes' row when it names none)."""
    return get_toolchain(profile.toolchain.name, profile.toolchain.version, profile.source)
