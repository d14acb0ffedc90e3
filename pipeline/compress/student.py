"""The assembled student: chosen blocks plus the teacher's head; saved as a state_dict and a JSON spec."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import write_json
from .blocks import build_block, cut_teacher

SPEC_SCHEMA = "embedded-pipeline/student/1"


class Student(nn.Module):
    """``classifier(features(x))`` like the teacher, so that a student can be compressed again."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.features = nn.Sequential(*blocks)
        self.classifier = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def assemble(spec: dict[str, Any], teacher: nn.Module) -> nn.Module:
    """A student from its spec; blocks of type "teacher" (and the head) are copied from ``teacher`` (whose weights
    a saved student's own state_dict then replaces). A detector's student is a copy of the teacher with the chosen
    ``features``: its decoding and what its training reads (``raw``, ``decode``) stay the teacher's."""
    blocks, head = cut_teacher(teacher, spec["boundaries"], head=spec.get("head", "classifier"))
    by_name = {b.name: b.module for b in blocks}
    modules = [copy.deepcopy(by_name[s["block"]]) if s["type"] == "teacher" else build_block(s) for s in spec["blocks"]]
    if spec.get("head") == "detector-head":
        student = copy.deepcopy(teacher)
        student.features = nn.Sequential(*modules)
        return student
    return Student(modules, copy.deepcopy(head))


def save_student(student: nn.Module, spec: dict[str, Any], directory: Path) -> None:
    """``student.pt`` (weights) and ``student.json`` (architecture) in ``directory``, each written whole."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / ".student.pt.partial"
    torch.save(student.state_dict(), partial)
    os.replace(partial, directory / "student.pt")
    write_json(directory / "student.json", {"schema": SPEC_SCHEMA, **spec})


def load_student(spec: dict[str, Any], weights: Path, teacher: nn.Module) -> nn.Module:
    """The student of ``spec`` with its saved ``weights``; ``teacher`` is its teacher's architecture."""
    student = assemble(spec, teacher)
    student.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return student.eval()
