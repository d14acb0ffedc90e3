"""Bench: each artifact timed in a fresh process by the bundle's own runner, with the profile's thread count."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

import benchmarks.runner

from ..artifacts import Artifact
from ..config import BenchOptions
from ..errors import BenchmarkError

RUNNER = Path(benchmarks.runner.__file__)


def bench_artifacts(manifest_path: Path, artifacts: list[Artifact], threads: int, options: BenchOptions,
                    workdir: Path) -> list[dict]:
    """Benchmark every artifact of ``manifest_path`` in its own process (clean peak memory, no shared warm-up)."""
    results = []
    for artifact in tqdm(artifacts, desc="benchmark", unit="artifact"):
        out = workdir / f"{artifact.kind}.json"
        command = [
            sys.executable, str(RUNNER), "--manifest", str(manifest_path), "bench", "--artifact", artifact.kind,
            "--threads", str(threads), "--runs", str(options.runs), "--warmup", str(options.warmup),
            "--max-seconds", str(options.max_seconds), "--json", str(out),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchmarkError(f"{artifact.path}: benchmark of {artifact.kind} failed: {last}")
        results.append(json.loads(out.read_text()))
    return results
