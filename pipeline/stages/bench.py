"""Bench: the bundle runner's ``bench-all`` on this host, or on the board over SSH (``pipeline.remote``).

Both give the same versioned JSON (``embedded-pipeline/bench-suite/1``): every artifact timed in fresh
processes, ``repeats`` times, with the median of the repeats and a noise flag.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import deque
from pathlib import Path

import benchmarks.runner

from ..config import BenchOptions
from ..errors import BenchmarkError

RUNNER = Path(benchmarks.runner.__file__)


def runner_args(options: BenchOptions, threads: int) -> list[str]:
    """The ``bench-all`` options, the same for a local and a remote run."""
    return ["--threads", str(threads), "--runs", str(options.runs), "--warmup", str(options.warmup),
            "--max-seconds", str(options.max_seconds), "--repeats", str(options.repeats),
            "--noise-threshold", str(options.noise_threshold)]


def bench_local(manifest_path: Path, threads: int, options: BenchOptions, out_json: Path,
                log=print) -> dict:
    """Run the runner's ``bench-all`` here on ``manifest_path``; its progress lines go to ``log``."""
    command = [sys.executable, str(RUNNER), "--manifest", str(manifest_path), "bench-all",
               *runner_args(options, threads), "--json", str(out_json)]
    tail: deque[str] = deque(maxlen=5)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            tail.append(line.rstrip())
            if line.startswith("["):
                log(f"  bench {line.rstrip()}")
    if process.returncode != 0 or not out_json.is_file():
        raise BenchmarkError(f"{manifest_path}: benchmark failed: {tail[-1] if tail else 'no output'}")
    suite = json.loads(out_json.read_text())
    suite["location"] = {"kind": "local"}
    out_json.write_text(json.dumps(suite, indent=2))
    return suite
