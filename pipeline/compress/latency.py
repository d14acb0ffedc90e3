"""A latency table: every candidate block's latency, measured once per board and runtime, for a latency budget.

The compressor does not know how a board runs a model: it is handed a ``measure(module, input_shape) -> ms``
(the compress stage's: the block exported to ONNX and timed with the target's runtime) and a label saying where the
figures come from. Each block is timed alone, less what a block alone costs beyond its share of a whole model
(calibrated on the teacher), so that a student's predicted latency is the sum of its blocks' and its head's.
Figures are cached in a JSON file per board and runtime, keyed by the block's spec (the teacher's own blocks by
their structure) and input shape.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from torch import nn
from tqdm.auto import tqdm

from ..artifacts import sha256_json

Measure = Callable[[nn.Module, tuple], float]


class LatencyTable:
    def __init__(self, measure: Measure, source: str, cache: Path | None = None):
        self.measure, self.source, self.cache = measure, source, cache
        self.entries: dict[str, float] = json.loads(cache.read_text()) if cache and cache.is_file() else {}
        self.measured = 0
        self.per_block_ms = 0.0  # what timing a block alone adds, taken off every block (``blocks``)

    def latency(self, key: dict, module: nn.Module, input_shape: tuple) -> float:
        """The module's latency in ms, from the table or measured now."""
        name = sha256_json({**key, "input_shape": list(input_shape)})[:20]
        if name not in self.entries:
            self.entries[name] = round(float(self.measure(module, tuple(input_shape))), 5)
            self.measured += 1
        return self.entries[name]

    def blocks(self, candidates: list, shapes: list[tuple[tuple, tuple]], head: nn.Module, teacher: nn.Module) -> float:
        """Set every candidate's ``latency_ms``; return the head's. A block timed alone costs more than inside a
        model (its own call, its input copied in and its output out); that cost, per block, is calibrated on the
        teacher: the sum of its blocks' and head's times less its own measured time, over its blocks. So the
        teacher's prediction is its measurement, and a student's is the sum of its blocks' and its head's."""
        bar = tqdm(total=sum(map(len, candidates)) + 2, desc=f"latency table ({self.source})", unit="block")
        raw = []
        for group, (in_shape, _) in zip(candidates, shapes):
            row = []
            for candidate in group:
                bar.update(1)
                key = candidate.spec if candidate.spec["type"] != "teacher" else {"teacher": repr(candidate.module)}
                row.append(0.0 if candidate.spec["type"] == "identity" else  # no op at all
                           self.latency(key, candidate.module, in_shape))
            raw.append(row)
        head_ms = self.latency({"head": repr(head)}, head, shapes[-1][1])
        whole = self.latency({"model": repr(teacher)}, teacher, shapes[0][0])
        bar.update(2)
        bar.close()
        self.per_block_ms = max(0.0, (sum(row[0] for row in raw) + head_ms - whole) / len(raw))  # [0]: the teacher's
        for group, row in zip(candidates, raw):
            for candidate, ms in zip(group, row):
                candidate.latency_ms = 0.0 if candidate.spec["type"] == "identity" else max(0.0, ms - self.per_block_ms)
        self.save()
        return head_ms

    def save(self) -> None:
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.cache)
