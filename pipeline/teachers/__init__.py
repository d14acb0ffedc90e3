"""Built-in teachers trained once and shipped with the package, as peers ship pretrained weights.

The demo's teacher takes about 20 minutes to train on 2 AVX2-only cores (3 on a CPU with bf16), and the demo is
about compressing it, not training it. ``scripts/train_teacher.py`` trains it through the model step and writes its
weights here beside a record of how: the recipe's key (training options, model, data fingerprint, architecture:
``train.recipe_key``), the weights' SHA-256, the held-out top-1, the time, the CPU and the command. A run whose
training recipe hashes to a shipped key loads those weights instead of training; any other recipe (more epochs,
other data, a changed architecture) trains as before. ``PIPELINE_SHIPPED_TEACHERS=0`` trains even where one matches.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import sha256_file
from ..errors import ModelError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedTeacher:
    weights: Path
    record: dict

    def stats(self, metric_key: str) -> dict:
        """The training stats the model step records, naming the file and the run that made it."""
        made = {k: self.record[k] for k in ("seconds", "device", "precision", "cpu", "command") if k in self.record}
        return {"cached": None, "shipped": self.weights.name, metric_key: self.record.get(metric_key),
                "seconds": 0.0, "made": made}


def shipped_teacher(recipe_key: str, folder: Path = HERE) -> ShippedTeacher | None:
    """The shipped teacher trained by ``recipe_key``'s recipe, checked against its recorded checksum, or None."""
    if os.environ.get("PIPELINE_SHIPPED_TEACHERS", "1") == "0":
        return None
    for record_file in sorted(folder.glob("*.json")):
        record = json.loads(record_file.read_text())
        if record.get("recipe_key") != recipe_key:
            continue
        weights = record_file.with_suffix(".pt")
        if not weights.is_file() or sha256_file(weights) != record["weights_sha256"]:
            raise ModelError(f"{weights}: missing or not the file its record {record_file.name} names (SHA-256 "
                             "differs); reinstall the package or run scripts/train_teacher.py")
        return ShippedTeacher(weights, record)
    return None
