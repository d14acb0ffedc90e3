"""A latency table: every candidate block's latency, measured once per board and runtime, for a latency budget.

The compressor does not know how a board runs a model: it is handed a ``measure(module, input_shape) -> ms``
(the compress stage's: the block exported to ONNX and timed with the target's runtime) and a label saying where the
figures come from. Each block is timed alone; one call's fixed cost (timed on an identity) is taken off every block
and counted once, in the head, so that a student's predicted latency is the sum of its blocks' and its head's.
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

    def latency(self, key: dict, module: nn.Module, input_shape: tuple) -> float:
        """The module's latency in ms, from the table or measured now."""
        name = sha256_json({**key, "input_shape": list(input_shape)})[:20]
        if name not in self.entries:
            self.entries[name] = round(float(self.measure(module, tuple(input_shape))), 5)
            self.measured += 1
        return self.entries[name]

    def call_overhead(self, input_shape: tuple) -> float:
        """One call's fixed cost: a ReLU on the input, the least a runtime can be made to run."""
        return self.latency({"call": "relu"}, nn.ReLU(), input_shape)

    def blocks(self, candidates: list, shapes: list[tuple[tuple, tuple]], head: nn.Module) -> float:
        """Set every candidate's ``latency_ms`` (without the per-call cost); return the head's, with it."""
        overhead = self.call_overhead(shapes[0][0])
        bar = tqdm(total=sum(map(len, candidates)) + 1, desc=f"latency table ({self.source})", unit="block")
        for group, (in_shape, _) in zip(candidates, shapes):
            for candidate in group:
                bar.update(1)
                if candidate.spec["type"] == "identity":  # no op at all
                    candidate.latency_ms = 0.0
                    continue
                key = candidate.spec if candidate.spec["type"] != "teacher" else {"teacher": repr(candidate.module)}
                candidate.latency_ms = max(0.0, self.latency(key, candidate.module, in_shape) - overhead)
        head_ms = self.latency({"head": repr(head)}, head, shapes[-1][1])
        bar.update(1)
        bar.close()
        self.save()
        return head_ms

    def save(self) -> None:
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.cache)
