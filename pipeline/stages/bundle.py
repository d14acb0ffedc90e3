"""Bundle: the board's artifacts, a manifest with checksums and I/O facts, and the standalone runner."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import benchmarks.runner

from ..artifacts import REFERENCE_KIND, Artifact, sha256_file

MANIFEST_SCHEMA = "embedded-pipeline/bundle/1"
TOOLS = ("embedded-pipeline", "torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "numpy")


def tool_versions() -> dict[str, str]:
    found = {}
    for name in TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_bundle(directory: Path, artifacts: list[Artifact], base: Path, info: dict) -> dict:
    """Copy the deployable artifacts (not the PyTorch reference) into ``directory`` and write its manifest."""
    (directory / "artifacts").mkdir()
    bundled = []
    for artifact in artifacts:
        if artifact.kind == REFERENCE_KIND:
            continue
        name = f"artifacts/{artifact.kind}{Path(artifact.path).suffix}"
        shutil.copyfile(base / artifact.path, directory / name)
        bundled.append(replace(artifact, path=name))
    shutil.copyfile(benchmarks.runner.__file__, directory / "run_model.py")
    files = {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        **info,
        "artifacts": [a.to_dict() for a in bundled],
        "tool_versions": tool_versions(),
        "files": files,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
