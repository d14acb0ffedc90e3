"""The step engine: runs a step unless its recorded inputs are unchanged, resumes, and writes atomically.

A step is one stage applied to one set of inputs. It declares its id, its stage, its parameters, the records
of the steps it needs and how it produces its outputs; the engine decides whether it runs. Every step writes
into a temp directory that replaces its output whole, then records the hash of its inputs in
``out/.state/<id>.json``; a step whose record matches its inputs (and whose files are all there) is skipped,
unless ``--force`` or ``--from`` an earlier-or-equal stage says otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from .allocator import PeakMemory, release
from .artifacts import atomic_dir, remove_partials, sha256_file, sha256_json, write_json
from .config import STAGES
from .errors import StageOrderError


@dataclass
class Step:
    id: str  # its one identity: the state file's name, and the key under which a run builds it once
    stage: str
    params: dict
    needs: list[dict]  # the records of the steps whose outputs it reads
    directory: Path  # where its outputs go
    produce: Callable[..., dict]  # produce(tmp) -> outputs ({"files": {key: name}, other data...})
    flatten: bool = False  # the outputs go straight into ``directory`` (a target's report), each file replaced
    resumable: bool = False  # produce(tmp, resume_dir=...): what it saves there outlives an interruption
    inputs_hash: str = field(init=False)

    def __post_init__(self):
        self.inputs_hash = sha256_json({"params": self.params, "upstream": [u["outputs_hash"] for u in self.needs]})


class Engine:
    """Runs steps in one run directory, for the requested stages, honouring ``--force`` and ``--from``."""

    def __init__(self, out: Path, requested: Iterable[str] = STAGES, force: bool = False, from_stage: str | None = None,
                 log: Callable[[str], None] = print):
        self.out, self.requested, self.force, self.from_stage, self.log = Path(out), set(requested), force, from_stage, log

    def wants(self, stage: str) -> bool:
        """Whether ``stage`` is among or before the requested stages (later ones are not built)."""
        return STAGES.index(stage) <= max(STAGES.index(s) for s in self.requested)

    def forced(self, stage: str) -> bool:
        start = self.from_stage
        return self.force or (start is not None and STAGES.index(stage) >= STAGES.index(start))

    def path(self, record: dict, key: str) -> Path:
        return self.out / record["files"][key]

    def run(self, step: Step) -> dict:
        """The step's record: read back when its inputs are unchanged, else made by running it."""
        record_path = self.out / ".state" / f"{step.id.replace('/', '__')}.json"
        resume_dir = record_path.with_suffix(".resume")
        record = _read_json(record_path)
        valid = (record is not None and record["inputs_hash"] == step.inputs_hash
                 and all((self.out / f).is_file() for f in record["files"].values()))
        if step.stage not in self.requested:
            if not valid:
                command = "export" if step.stage == "model" else step.stage
                raise StageOrderError(f"{self.out}: stage '{step.stage}' has no up-to-date output ({step.id}); run "
                                      f"'pipeline {command}' or 'pipeline run' on this directory first")
            return record
        if valid and not self.forced(step.stage):
            self.log(f"[skip] {step.id}: inputs unchanged")
            return record
        self.log(f"[run ] {step.id}")
        started, memory = time.perf_counter(), PeakMemory()
        outputs = self._produce(step, resume_dir)
        seconds, memory = round(time.perf_counter() - started, 2), memory.figures()
        release()  # what the step freed goes back to the system, not into the next step's peak
        files = {k: (step.directory / v).relative_to(self.out).as_posix() for k, v in outputs.pop("files", {}).items()}
        record = {
            "step": step.id, "stage": step.stage, "inputs_hash": step.inputs_hash, "params": step.params,
            "files": files, "data": outputs, "seconds": seconds, **memory,
            "outputs_hash": sha256_json({"files": {k: sha256_file(self.out / v) for k, v in files.items()},
                                         "data": outputs}),
        }
        write_json(record_path, record)
        if step.resumable:
            shutil.rmtree(resume_dir, ignore_errors=True)
        return record

    def _produce(self, step: Step, resume_dir: Path) -> dict:
        produce, directory = step.produce, step.directory
        remove_partials(directory if step.flatten else directory.parent)
        if step.resumable:
            stamp = resume_dir / "inputs_hash"
            if self.forced(step.stage) or not stamp.is_file() or stamp.read_text() != step.inputs_hash:
                shutil.rmtree(resume_dir, ignore_errors=True)
            resume_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(step.inputs_hash)
            produce = partial(produce, resume_dir=resume_dir)
        if not step.flatten:
            with atomic_dir(directory) as tmp:
                return produce(tmp)
        staging = directory / ".staging"
        with atomic_dir(staging) as tmp:
            outputs = produce(tmp)
        for file in staging.iterdir():
            os.replace(file, directory / file.name)
        shutil.rmtree(staging, ignore_errors=True)
        return outputs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
