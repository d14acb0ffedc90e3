"""Target board profiles: YAML files validated at load into frozen dataclasses.

A profile is found by name in ``targets/`` (``list_targets()``) or given as a path to a YAML file.
Every validation error names the file, the field, the bad value and what was expected.
"""
from __future__ import annotations

import os
import sys
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from board_runtime.registry import did_you_mean

from .compat import get_toolchain, toolchain_of
from .errors import ConfigError
from .formats import FORMATS
from .profile import (Board, Budgets, DetectionTolerance, Int8Granularity, Int8Scheme, IODtype, Layout, PeakGops,
                      Performance, TargetProfile, ToolchainSpec)
from .units import parse_count


def _targets_dir() -> Path:
    """The repository's targets/ (checkout or editable install), else the copy installed as data files."""
    checkout = Path(__file__).resolve().parents[1] / "targets"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "embedded-pipeline" / "targets"


TARGETS_DIR = _targets_dir()


# The runtimes a profile can name (its ``runtimes`` and ``install`` keys); each format row names those that run it.
KNOWN_RUNTIMES = ("litert", "tflite-runtime", "edgetpu", "onnxruntime", "onnxruntime-cuda", "tensorrt", "torch")


class _Fields:
    """Reads typed fields out of a mapping, raising errors that name file, field, value and expectation."""

    def __init__(self, source: Path, data: Any, prefix: str = ""):
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            self.fail("", data, "a mapping")
        self.data = data

    def fail(self, key: str, value: Any, expected: str) -> None:
        name = f"{self.prefix}{key}".rstrip(".") or "<top level>"  # a section itself: 'install', not 'install.'
        raise ConfigError(f"{self.source}: field '{name}': bad value {value!r}, expected {expected}")

    def check_keys(self, allowed: list[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise ConfigError(f"{self.source}: unknown field '{self.prefix}{key}'{did_you_mean(key, allowed)}; "
                                  f"valid fields: {', '.join(allowed)}")

    def get(self, key: str, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise ConfigError(f"{self.source}: missing field '{self.prefix}{key}'")
        return self.data[key]

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.source, self.get(key), f"{self.prefix}{key}.")

    def string(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            self.fail(key, value, "a non-empty string")
        return value

    def integer(self, key: str, minimum: int = 1) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, value, f"an integer >= {minimum}")
        return value

    def number(self, key: str, minimum: float = 0.0) -> float:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            self.fail(key, value, f"a number >= {minimum}")
        return float(value)

    def positive(self, key: str, unit: str = "number", nullable: bool = False) -> float | None:
        value = self.get(key, optional=nullable)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(key, value, f"a positive {unit}" + (", or null" if nullable else ""))
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(key, value, "true or false")
        return value

    def enum(self, key: str, kind: type[Enum]) -> Any:
        value = self.get(key)
        try:
            return kind(value)
        except ValueError:
            self.fail(key, value, "one of " + ", ".join(m.value for m in kind))

    def install_commands(self, key: str, runtimes: tuple[str, ...]) -> dict[str, str]:
        """Runtime name -> the shell command installing it; each of ``runtimes`` needs one."""
        commands = self.sub(key)
        commands.check_keys(list(KNOWN_RUNTIMES))
        for name in runtimes:
            if name not in commands.data:
                raise ConfigError(f"{self.source}: missing field '{commands.prefix}{name}': expected the shell command "
                                  f"that installs {name} on this board (every runtime in 'runtimes' needs one)")
        return {name: commands.string(name) for name in commands.data}

    def choices(self, key: str, valid: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not value:
            self.fail(key, value, "a non-empty list")
        for item in value:
            if item not in valid:
                self.fail(key, item, "one of " + ", ".join(valid))
        return tuple(value)

    def count(self, key: str) -> int | None:
        """A positive count such as 20M or 300k, or null for no limit."""
        value = self.get(key, optional=True)
        if value is None:
            return None
        parsed = parse_count(value)
        if parsed is None:
            self.fail(key, value, "a positive count such as 300000, 300k, 20M or 1.5G, or null")
        return parsed


def list_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc


def load_target(name_or_path: str | os.PathLike) -> TargetProfile:
    """Load a profile by name (``raspberry-pi-4``) or by path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text):
        path = TARGETS_DIR / f"{text}.yaml"
        if not path.is_file():
            valid = list_targets()
            raise ConfigError(f"unknown target '{text}'{did_you_mean(text, valid)}; valid targets: {', '.join(valid)}")
    if not path.is_file():
        raise ConfigError(f"{path}: target profile file not found")
    return _parse_profile(path, _read_yaml(path))


def _parse_profile(path: Path, data: Any) -> TargetProfile:
    top = _Fields(path, data)
    top.check_keys([f.name for f in fields(TargetProfile) if f.name != "source"])
    board = top.sub("board")
    board.check_keys([f.name for f in fields(Board)])
    int8 = top.sub("int8")
    int8.check_keys(["granularity", "io_dtype", "activation_symmetric"])
    budgets = top.sub("budgets")
    budgets.check_keys([f.name for f in fields(Budgets)])
    threads = top.integer("threads")
    artifacts = top.choices("artifacts", tuple(FORMATS))
    runtimes = top.choices("runtimes", KNOWN_RUNTIMES)
    for kind in artifacts:
        if not set(FORMATS[kind].runtimes) & set(runtimes):
            top.fail("artifacts", kind, f"a kind that one of the profile's runtimes ({', '.join(runtimes)}) runs; "
                                        f"{kind} runs on {', '.join(FORMATS[kind].runtimes)}")
    profile = TargetProfile(
        name=top.string("name"),
        description=top.string("description"),
        source=path,
        board=Board(
            cpu_arch=board.string("cpu_arch"),
            cpu=board.string("cpu"),
            cores=board.integer("cores"),
            memory_mb=board.integer("memory_mb"),
            accelerator=board.string("accelerator"),
        ),
        runtimes=runtimes,
        artifacts=artifacts,
        threads=threads,
        onnx_opset=top.integer("onnx_opset", minimum=13),
        input_layout=top.enum("input_layout", Layout),
        int8=Int8Scheme(
            granularity=int8.enum("granularity", Int8Granularity),
            io_dtype=int8.enum("io_dtype", IODtype),
            activation_symmetric=int8.boolean("activation_symmetric"),
        ),
        budgets=Budgets(
            max_flops=budgets.count("max_flops"),
            max_params=budgets.count("max_params"),
            max_model_size_mb=budgets.positive("max_model_size_mb", "number of megabytes", nullable=True),
        ),
        accuracy_tolerance=top.number("accuracy_tolerance"),
        detection_tolerance=_parse_detection_tolerance(top),
        install=top.install_commands("install", runtimes),
        performance=_parse_performance(top),
        toolchain=_parse_toolchain(top),
    )
    if profile.onnx_opset > 21:
        top.fail("onnx_opset", profile.onnx_opset, "an opset between 13 and 21 (onnx 1.19 / onnxruntime 1.23)")
    parses = toolchain_of(profile).max_opset(profile.toolchain.version)
    if parses is not None and profile.onnx_opset > parses:
        top.fail("onnx_opset", profile.onnx_opset, f"at most {parses}, the highest opset the board's "
                                                   f"{profile.toolchain.name} {profile.toolchain.version} parses")
    if path.parent == TARGETS_DIR and profile.name != path.stem:
        top.fail("name", profile.name, f"'{path.stem}' (the file name)")
    return profile


def _parse_detection_tolerance(top: _Fields) -> DetectionTolerance:
    section = top.sub("detection_tolerance")
    section.check_keys([f.name for f in fields(DetectionTolerance)])
    return DetectionTolerance(**{f.name: section.number(f.name) for f in fields(DetectionTolerance)})


def _parse_toolchain(top: _Fields) -> ToolchainSpec:
    """The optional ``toolchain:`` section (name, version, platform, int8); absent means the CPU runtimes."""
    if top.get("toolchain", optional=True) is None:
        return ToolchainSpec()
    section = top.sub("toolchain")
    section.check_keys([f.name for f in fields(ToolchainSpec)])
    spec = ToolchainSpec(name=section.string("name"), version=str(section.get("version")),
                         platform=section.string("platform") if "platform" in section.data else None,
                         int8=section.boolean("int8") if "int8" in section.data else True)
    get_toolchain(spec.name, spec.version, top.source)
    return spec


def _parse_performance(top: _Fields) -> Performance | None:
    """The optional ``performance:`` section; absent or null means no roofline estimates."""
    if top.get("performance", optional=True) is None:
        return None
    section = top.sub("performance")
    section.check_keys([f.name for f in fields(Performance)])
    peaks = section.sub("peak_gops")
    peaks.check_keys([f.name for f in fields(PeakGops)])
    return Performance(
        peak_gops=PeakGops(**{f.name: peaks.positive(f.name, "number of giga-operations per second", nullable=True)
                              for f in fields(PeakGops)}),
        memory_bandwidth_gbs=section.positive("memory_bandwidth_gbs", "number of GB/s"),
        source=section.string("source"),
    )
