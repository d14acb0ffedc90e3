"""Bench: the bundle runner's ``bench-all`` on this host, or on the board over SSH (``pipeline.remote``).

Both give the same versioned JSON (``embedded-pipeline/bench-suite/1``): every artifact timed in fresh
processes, ``repeats`` times, with the median of the repeats and a noise flag.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import asdict
from pathlib import Path

import board_runtime

from ..config import BenchOptions
from ..engine import Step
from ..errors import BenchmarkError

RUNTIME_PARENT = Path(board_runtime.__file__).resolve().parents[1]


def runner_args(options: BenchOptions, threads: int) -> list[str]:
    """The ``bench-all`` options, the same for a local and a remote run."""
    return ["--threads", str(threads), "--runs", str(options.runs), "--warmup", str(options.warmup),
            "--max-seconds", str(options.max_seconds), "--repeats", str(options.repeats),
            "--noise-threshold", str(options.noise_threshold)]


def bench_local(manifest_path: Path, threads: int, options: BenchOptions, out_json: Path,
                log=print) -> dict:
    """Run the runner's ``bench-all`` here on ``manifest_path``; its progress lines go to ``log``."""
    command = [sys.executable, "-m", "board_runtime", "--manifest", str(manifest_path), "bench-all",
               *runner_args(options, threads), "--json", str(out_json)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(RUNTIME_PARENT), os.environ.get("PYTHONPATH", "")])}
    tail: deque[str] = deque(maxlen=5)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as process:
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


def bench_step(plan, target, built: list, bundled: dict | None) -> dict:
    """Every artifact timed on the board over SSH (with the bundle as deployed), or on this host."""
    options, target_dir = plan.config.bench, plan.out / target.name
    if options.host:
        from ..remote import SSHTarget, remote_bench

        ssh = SSHTarget.parse(options.host, port=options.ssh_port, identity_file=options.ssh_identity,
                              python=options.remote_python, known_hosts=options.ssh_known_hosts)
        threads, needs = target.threads, [bundled]
        location = {"kind": "ssh", "destination": ssh.destination, "port": ssh.port}

        def measure(out_json: Path) -> dict:
            return remote_bench(ssh, plan.path(bundled, "manifest").parent, target, runner_args(options, threads),
                                out_json, options.timeout_s, plan.engine.log)
    else:
        # More threads than this host has cores would measure contention, not the model.
        threads, location, needs = min(target.threads, os.cpu_count() or 1), {"kind": "local"}, [r for _, r in built]

        def measure(out_json: Path) -> dict:
            return bench_local(target_dir / "artifacts.json", threads, options, out_json, plan.engine.log)

    def produce(tmp: Path) -> dict:
        suite = measure(tmp / "bench.json")
        return {"files": {"suite": "bench.json"}, "results": suite["results"], "system": suite["system"],
                "system_after": suite["system_after"], "location": suite["location"]}

    timing = {k: v for k, v in asdict(options).items() if k != "timeout_s"}
    return plan.run(Step(f"{target.name}/bench", "bench", {"bench": timing, "threads": threads, "where": location},
                         needs, target_dir / "bench", produce))
