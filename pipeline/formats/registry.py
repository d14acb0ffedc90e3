"""The format registry: one row per artifact kind.

A row says what the artifact is (file format, precision), which stage builds it and how (``build``: the step
that writes it, asking the planner for what it needs), how its input and output are read back (``io``), which
session of the on-board runtime runs it and which of a profile's runtimes can, and where it is built. Target
profiles are validated against this table, the planner builds from it, and the bundle manifest copies each
row's session into every artifact entry. Adding a kind is one module that calls ``register_format``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from board_runtime.registry import Registry

from ..errors import ConfigError

# io(record, key, target, input_shape) -> the Artifact's I/O fields; build(planner, target) -> (record, key)
IOReader = Callable[[dict, str, Any, tuple[int, ...]], dict]
Builder = Callable[[Any, Any], tuple[dict, str]]


@dataclass(frozen=True)
class Format:
    kind: str  # e.g. "tflite-int8"
    format: str  # the file format: torch | onnx | tflite
    precision: str  # fp32 | fp16 | int8
    label: str  # as reports name it
    stage: str  # the pipeline stage that builds it (a stage command builds only the kinds up to its stage)
    session: str  # the on-board runtime's session that runs it
    runtimes: tuple[str, ...]  # the profile runtimes (``targets.KNOWN_RUNTIMES``) that can run it
    build: Builder  # the step that writes it: (planner, target) -> (step record, the file's key in it)
    io: IOReader  # how its input and output are fed and read back
    built_on: str = "host"  # host | board (a kind whose builder needs the board, such as a TensorRT engine)
    deployable: bool = True  # goes into the bundle (not the PyTorch reference: boards have no torch)


FORMATS: Registry[Format] = Registry("artifact kind", ConfigError)


def register_format(row: Format) -> Format:
    if row.built_on not in ("host", "board"):
        raise ValueError(f"artifact kind '{row.kind}': built_on must be 'host' or 'board', not {row.built_on!r}")
    return FORMATS.register(row.kind, row)


def get_format(kind: str) -> Format:
    return FORMATS.find(kind)


def float_io(record: dict, key: str, target: Any, input_shape: tuple[int, ...]) -> dict:
    """Float NCHW input and float output, as the model takes them (PyTorch, ONNX with float I/O)."""
    return {"input_name": "input", "input_shape": tuple(input_shape), "input_layout": "NCHW",
            "input_dtype": "float32", "output_dtype": "float32"}
