"""Bundle: the board's artifacts, a manifest with checksums and I/O facts, and the on-board runtime.

The runtime is the ``board_runtime`` package, copied whole beside ``run_model.py`` (its ``__main__``), so that
the board needs only Python, numpy and the runtimes. ``out/<target>/artifacts.json`` is the same manifest for
the artifacts where they lie on this host, which the host's evaluation and benchmark read.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import board_runtime
from board_runtime.schemas import BUNDLE_SCHEMA

from ..artifacts import Artifact, sha256_file, sha256_json, write_json
from ..engine import Step
from ..formats import FORMATS
from .compat import board_scripts, bundled_name

TOOLS = ("embedded-pipeline", "torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "numpy")
RUNTIME_DIR = Path(board_runtime.__file__).parent
EXECUTION_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider"}


def tool_versions() -> dict[str, str]:
    found = {}
    for name in TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def manifest_info(plan, target) -> dict:
    """What a manifest says besides its artifacts: the model, its input, preprocessing, classes and providers."""
    data = plan.model_record["data"]
    return {"model": {"source": plan.config.model, "params": data["params"], "flops": data["flops"]},
            "input": {"shape": data["input_shape"], "dtype": "float32", "scale": "pixels / 255"},
            "preprocess": data["preprocess"], "classes": data["classes"],
            # what the outputs mean: a classifier's logits, or a detector's tensors and the decoder that reads them
            "task": data.get("task", "classify"), **({"detect": data["decoder"]} if "decoder" in data else {}),
            # onnxruntime providers the board's runtimes bring, in its order of preference; CPU last
            "execution_providers": [EXECUTION_PROVIDERS[r] for r in target.runtimes if r in EXECUTION_PROVIDERS]
            + ["CPUExecutionProvider"]}


def write_target_manifest(plan, target, artifacts: list[Artifact]) -> Path:
    path = plan.out / target.name / "artifacts.json"
    write_json(path, {"schema": BUNDLE_SCHEMA, **manifest_info(plan, target), "artifacts": [a.to_dict() for a in artifacts]})
    return path


def copy_runtime(directory: Path) -> None:
    """``run_model.py`` and the ``board_runtime`` package it runs."""
    (directory / "board_runtime").mkdir()
    for source in sorted(RUNTIME_DIR.glob("*.py")):
        shutil.copyfile(source, directory / "board_runtime" / source.name)
    shutil.copyfile(RUNTIME_DIR / "__main__.py", directory / "run_model.py")


def file_hashes(directory: Path) -> dict[str, str]:
    """The sha256 of every file under ``directory`` by its relative path: a manifest's ``files``, which
    ``run_model.py verify`` checks on the board."""
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def write_bundle(directory: Path, artifacts: list[Artifact], base: Path, info: dict,
                 extra: dict[str, Path | str] | None = None) -> dict:
    """Copy the artifacts a board can run into ``directory`` with the runtime, and write its manifest; ``extra``:
    more files by name (a file to copy, or a text to write: the compatibility report, the board scripts)."""
    (directory / "artifacts").mkdir()
    bundled = []
    for artifact in artifacts:
        if not FORMATS[artifact.kind].deployable:
            continue
        name = bundled_name(artifact)
        shutil.copyfile(base / artifact.path, directory / name)
        bundled.append(replace(artifact, path=name))
    copy_runtime(directory)
    for name, content in (extra or {}).items():
        if isinstance(content, Path):
            shutil.copyfile(content, directory / name)
        else:
            (directory / name).write_text(content)
            if name.endswith(".sh"):
                (directory / name).chmod(0o755)
    manifest = {"schema": BUNDLE_SCHEMA, **info, "artifacts": [a.to_dict() for a in bundled],
                "tool_versions": tool_versions(), "files": file_hashes(directory)}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def bundle_step(plan, target, built: list[tuple[Artifact, dict]], evaluation: dict, compat: dict) -> dict:
    """The bundle, its manifest saying whether every artifact passed the accuracy gate (a failing bundle is still
    written, so that it can be looked at and benchmarked, and marked as failing), with the compatibility report and
    the board scripts."""
    target_dir = plan.out / target.name
    gate = evaluation["gate"]

    def produce(tmp: Path) -> dict:
        info = {"target": target.name, **manifest_info(plan, target), "accuracy_gate": gate,
                "compatibility": compat["data"]["verdicts"]}
        extra = {"compatibility.md": plan.path(compat, "md"), "compatibility.json": plan.path(compat, "json"),
                 **board_scripts(target, [a for a, _ in built])}
        write_bundle(tmp, [a for a, _ in built], target_dir, info, extra)
        return {"files": {"manifest": "manifest.json"}}

    runtime = sha256_json({p.name: sha256_file(p) for p in sorted(RUNTIME_DIR.glob("*.py"))})  # a new runtime: rebundle
    return plan.run(Step(f"{target.name}/bundle", "bundle", {"runtime": runtime, "accuracy_gate": gate},
                         [plan.model_record, *[r for _, r in built], evaluation, compat], target_dir / "bundle",
                         produce))
