"""A latency table: every candidate block's latency, measured once per board and runtime, for a latency budget.

The compressor does not know how a board runs a model: it is handed a ``measure(models) -> ms`` that times a list of
``(module, input_shape)`` at once (the compress stage's: each exported to ONNX and timed with the target's runtime,
on this host or on the board in one visit; or estimated from the board's roofline) and a label saying where the
figures come from. Each block is timed alone, less what a block alone costs beyond its share of a whole model (a
correction per block, fitted on whole models: ``LatencyTable.blocks``), so that a student's predicted latency is the
sum of its blocks' and its head's. Figures are cached in a JSON file per board and runtime, keyed by the block's spec
(the teacher's own blocks and the whole models by their structure) and input shape.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from ..artifacts import sha256_json
from ..errors import ConfigError
from .selection import Option, select
from .student import Student

Measure = Callable[[list[tuple[nn.Module, tuple]]], list[float]]
CALIBRATION_STUDENTS = 6  # whole students under the budget that the per-block correction is fitted on


class LatencyTable:
    def __init__(self, measure: Measure, source: str, cache: Path | None = None):
        self.measure, self.source, self.cache = measure, source, cache
        self.entries: dict[str, float] = json.loads(cache.read_text()) if cache and cache.is_file() else {}
        self.measured = 0
        self.per_block_ms = 0.0  # what timing a block alone adds, taken off every block (``blocks``)
        self.calibration: list[dict] = []  # the whole models the correction was fitted on

    def latencies(self, wanted: list[tuple[dict, nn.Module, tuple]]) -> list[float]:
        """The latency in ms of each ``(key, module, input_shape)``: from the table, the missing ones measured now
        in one call."""
        names = [sha256_json({**key, "input_shape": list(shape)})[:20] for key, _, shape in wanted]
        missing = {name: (module, tuple(shape)) for name, (_, module, shape) in zip(names, wanted)
                   if name not in self.entries}
        if missing:
            for name, ms in zip(missing, self.measure(list(missing.values()))):
                self.entries[name] = round(float(ms), 5)
            self.measured += len(missing)
            self.save()
        return [self.entries[name] for name in names]

    def blocks(self, candidates: list, shapes: list[tuple[tuple, tuple]], head: nn.Module, budgets: tuple,
               fixed: tuple, seed: int = 0) -> float:
        """Set every candidate's ``latency_ms``; return the head's.

        A block timed alone costs more than inside a model (its own call, its input copied in and its output out).
        That cost per block is fitted, by least squares, on whole models measured as they are: the teacher
        (``candidates[b][0]`` is its block b) and ``CALIBRATION_STUDENTS`` students that ``budgets`` (FLOPs,
        parameters, ms) admit, chosen with random scores, so that the fit holds where the budget puts the student.
        ``fixed`` is the head's (FLOPs, parameters).
        """
        timed = [(b, i) for b, group in enumerate(candidates) for i, c in enumerate(group) if _is_op(c)]
        head_ms, *raw = self.latencies([({"head": repr(head)}, head, shapes[-1][1])] + [
            (_key(candidates[b][i]), candidates[b][i].module, shapes[b][0]) for b, i in timed])
        alone = [[0.0] * len(group) for group in candidates]  # an identity is no op at all
        for (b, i), ms in zip(timed, raw):
            alone[b][i] = ms
        teacher = tuple(0 for _ in candidates)
        self._fit(candidates, alone, head, head_ms, shapes[0][0], [teacher])  # a first correction, to choose with
        rng, students = np.random.default_rng(seed), []
        for _ in range(CALIBRATION_STUDENTS):
            grid = [[Option(float(rng.random()), c.flops, c.params, c.latency_ms) for c in group]
                    for group in candidates]
            try:
                students.append(select(grid, *budgets[:2], (*fixed, head_ms), budgets[2]).choice)
            except ConfigError:
                break  # no student fits: the compressor's own check says why
        self._fit(candidates, alone, head, head_ms, shapes[0][0], [teacher, *students])
        return head_ms

    def _fit(self, candidates: list, alone: list[list[float]], head: nn.Module, head_ms: float, input_shape: tuple,
             choices: list[tuple[int, ...]]) -> None:
        """Measure the students of ``choices`` whole; fit ``per_block_ms`` so that measured = head + sum over the
        blocks of (alone - correction); set every candidate's ``latency_ms`` with it."""
        chosen = [[candidates[b][i] for b, i in enumerate(choice)] for choice in choices]
        measured = self.latencies([({"model": [_key(c) for c in blocks], "head": repr(head)},
                                    Student([c.module for c in blocks], head), input_shape) for blocks in chosen])
        sums = [head_ms + sum(alone[b][i] for b, i in enumerate(choice)) for choice in choices]
        counts = [sum(map(_is_op, blocks)) for blocks in chosen]
        self.per_block_ms = max(0.0, float(np.dot(counts, np.subtract(sums, measured)) / np.dot(counts, counts)))
        for group, row in zip(candidates, alone):
            for candidate, ms in zip(group, row):
                candidate.latency_ms = max(0.0, ms - self.per_block_ms) if _is_op(candidate) else 0.0
        self.calibration = [{"blocks": [c.spec["type"] for c in blocks], "measured_ms": ms,
                             "predicted_ms": round(head_ms + sum(c.latency_ms for c in blocks), 5)}
                            for blocks, ms in zip(chosen, measured)]

    def save(self) -> None:
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.cache)


def _is_op(candidate) -> bool:
    return candidate.spec["type"] != "identity"


def _key(candidate) -> dict:
    """A candidate's table key: its spec, or the teacher's own block by its structure."""
    return {"teacher": repr(candidate.module)} if candidate.spec["type"] == "teacher" else candidate.spec
