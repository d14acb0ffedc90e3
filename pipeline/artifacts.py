"""The typed record of an artifact on disk (as a bundle manifest lists it), and atomic file helpers."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Artifact:
    """One deployable model file and what a runtime needs to feed it."""

    kind: str  # a row of the format registry (``pipeline.formats``)
    format: str  # the file format: torch | onnx | tflite
    precision: str  # fp32 | fp16 | int8
    session: str  # the on-board runtime's session that runs it (``board_runtime.sessions.SESSIONS``)
    path: str  # absolute, or relative to the manifest that lists it
    input_name: str
    input_shape: tuple[int, ...]
    input_layout: str  # NCHW | NHWC
    input_dtype: str  # float32 | int8 | uint8
    output_dtype: str
    input_quant: QuantParams | None = None
    output_quant: QuantParams | None = None
    sha256: str = ""
    size_bytes: int = 0
    calibration: str | None = None  # int8: what calibrated its ranges
    # A file with several outputs: each as the reference model names it, in its order, with where it is among the
    # file's own outputs ("index") and its quantization ("quant", None when float). Empty: the file's order.
    outputs: tuple[dict, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def plain_data(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as plain JSON/YAML-safe values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value):
        return {f.name: plain_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Write through a temp file and an atomic rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``final``; on success it replaces ``final`` whole.

    On any error the temp directory is removed and ``final`` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared and deployed
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def remove_partials(directory: Path) -> None:
    """Remove what an interrupted stage left behind (its ``.partial`` temp directories)."""
    if directory.is_dir():
        for leftover in directory.glob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
