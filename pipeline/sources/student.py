"""A compressed student as a model source: its ``student.json`` spec (``--model``) and ``student.pt`` weights."""
from __future__ import annotations

import json
from pathlib import Path

from ..compress.student import load_student
from ..data.preprocess import PreprocessOptions
from ..errors import ModelError
from .registry import ModelSource, SourceKind, build_model, register_source


def load_student_files(spec_path: Path, weights: Path | None = None):
    """The student of ``spec_path`` with ``weights`` (default: ``student.pt`` beside it); its teacher-kept blocks
    come from the teacher's own source."""
    try:
        spec = json.loads(Path(spec_path).read_text())
        teacher = spec["teacher"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{spec_path}: not a student spec ({type(exc).__name__}: {exc})") from exc
    rebuilt = build_model(ModelSource(teacher["model"]), teacher["in_channels"], teacher["num_classes"])
    return load_student(spec, weights or Path(spec_path).with_name("student.pt"), rebuilt)


def _load(source: ModelSource, in_channels: int, num_classes: int):
    path = Path(source.model)
    if not path.is_file():
        raise ModelError(f"{path}: student spec not found")
    weights = Path(source.weights) if source.weights else path.with_name("student.pt")
    if not weights.is_file():
        raise ModelError(f"{weights}: student weights not found (pass --weights)")
    return load_student_files(path, weights)


def _teacher_preprocessing(source: ModelSource) -> tuple[PreprocessOptions, str] | None:
    """The teacher's preprocessing, which the compress step records in the spec."""
    try:
        recorded = json.loads(Path(source.model).read_text())["teacher"].get("preprocess")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # loading the spec says what is wrong with it
    if not recorded:
        return None
    recipe = {k: recorded.get(k) for k in ("channel_order", "resize", "crop", "interpolation")}
    return (PreprocessOptions(mean=tuple(recorded["mean"]), std=tuple(recorded["std"]), **recipe),
            f"the teacher's preprocessing, recorded in {Path(source.model).name}")


register_source(SourceKind("student", lambda model: model.endswith(".json"), _load,
                           usage="a compressed student's .json spec", preprocessing=_teacher_preprocessing))
