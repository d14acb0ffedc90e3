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
import numpy as np

from ..artifacts import write_json
from ..config import BenchOptions, Task
from ..engine import Step
from ..errors import BenchmarkError
from ..formats import FORMATS

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


BOARD_SAMPLES = 200  # held-out samples each artifact runs on the board (a slow or emulated board: a few minutes)


def board_samples(plan) -> tuple[np.ndarray, list | np.ndarray]:
    """A reproducible subset of the held-out samples (of the evaluation's size at most) as the model takes them, and
    their labels."""
    test = plan.data.test.take(min(BOARD_SAMPLES, plan.config.eval_samples or BOARD_SAMPLES))
    images, labels = test.read(), test.labels
    return plan.preprocess().apply(images), labels if plan.task is Task.DETECT else np.asarray(labels)


def host_logits(target_dir: Path, built: list, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every artifact's outputs on ``inputs`` here, with the same runtime code the board runs."""
    from board_runtime.model import Model

    return {artifact.kind: Model(artifact.to_dict(), target_dir, threads=1).predict_each(inputs)
            for artifact, _ in built}


def host_detections(target_dir: Path, built: list, inputs: np.ndarray, decoder: dict) -> dict[str, list]:
    """Every artifact's detections on ``inputs`` here, decoded with the same runtime code the board runs."""
    from board_runtime.detection import postprocess
    from board_runtime.model import Model

    models = {artifact.kind: Model(artifact.to_dict(), target_dir, threads=1) for artifact, _ in built}
    return {kind: [postprocess(model.outputs(x[None]), tuple(x.shape[1:]), decoder) for x in inputs]
            for kind, model in models.items()}


def board_evaluation(board: dict, host: dict, labels: np.ndarray) -> dict:
    """Per artifact: top-1 from the board's own outputs and from this host's, how often their top-1 agree, and the
    largest logit difference."""
    rows = []
    for kind, logits in board.items():
        here = host[kind]
        rows.append({"kind": kind, "board_top1": 100.0 * float((logits.argmax(1) == labels).mean()),
                     "host_top1": 100.0 * float((here.argmax(1) == labels).mean()),
                     "agreement": 100.0 * float((logits.argmax(1) == here.argmax(1)).mean()),
                     "max_logit_diff": float(np.abs(logits - here).max())})
    return {"samples": int(len(labels)), "artifacts": rows}


def board_evaluation_sections(evaluation: dict | None) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """The report's section on the board's own outputs (none when nothing ran on a board)."""
    if not evaluation:
        return []
    if evaluation.get("task") == "detect":
        from ..detection.evaluate import board_detection_sections

        return board_detection_sections(evaluation)
    note = (f"Each artifact run by the bundle on the board on {evaluation['samples']} held-out samples, its outputs "
            "brought back and scored here, beside the same artifact run on this host by the same runtime code.")
    rows = [[r["kind"], f"{r['board_top1']:.2f}", f"{r['host_top1']:.2f}", f"{r['agreement']:.2f}",
             f"{r['max_logit_diff']:.2e}"] for r in evaluation["artifacts"]]
    return [("On the board: top-1 from its own outputs", note,
             ["artifact", "board top-1 %", "host top-1 %", "same top-1 as host %", "max abs logit diff"], rows)]


def board_ssh(options):
    """The board of ``bench.host`` with the bench options' SSH settings."""
    from ..ssh import SSHTarget

    return SSHTarget.parse(options.host, port=options.ssh_port, identity_file=options.ssh_identity,
                           python=options.remote_python, known_hosts=options.ssh_known_hosts)


def bench_step(plan, target, built: list, bundled: dict | None) -> dict:
    """Every artifact timed on the board over SSH (with the bundle as deployed), or on this host."""
    options, target_dir = plan.config.bench, plan.out / target.name
    if options.host:
        from ..remote import remote_bench, remote_logits

        ssh = board_ssh(options)
        threads, needs = target.threads, [bundled]
        location = {"kind": "ssh", "destination": ssh.destination, "port": ssh.port}

        def measure(out_json: Path) -> dict:
            bundle = plan.path(bundled, "manifest").parent
            suite = remote_bench(ssh, bundle, target, runner_args(options, threads), out_json, options.timeout_s,
                                 plan.engine.log, install=options.install)
            # the board's own outputs on held-out samples (a detector's decoded there), against this host's
            if plan.data is not None:
                inputs, labels = board_samples(plan)
                deployed = [(a, r) for a, r in built if FORMATS[a.kind].deployable]
                board = remote_logits(ssh, bundle, target, inputs, [a.kind for a, _ in deployed], options.timeout_s,
                                      plan.engine.log)
                if plan.task is Task.DETECT:
                    from ..detection.evaluate import board_detection_evaluation
                    from ..detection.train import truth_of

                    suite["board_evaluation"] = board_detection_evaluation(
                        board, host_detections(target_dir, deployed, inputs, plan.decoder),
                        truth_of(labels) if plan.data.labelled else None, plan.decoder,
                        max(len(plan.data.classes), 1), tuple(inputs.shape[2:]))
                else:
                    suite["board_evaluation"] = board_evaluation(board, host_logits(target_dir, deployed, inputs),
                                                                 labels)
                write_json(out_json, suite)
            return suite
    else:
        # More threads than this host has cores would measure contention, not the model.
        threads, location, needs = min(target.threads, os.cpu_count() or 1), {"kind": "local"}, [r for _, r in built]

        def measure(out_json: Path) -> dict:
            return bench_local(target_dir / "artifacts.json", threads, options, out_json, plan.engine.log)

    def produce(tmp: Path) -> dict:
        suite = measure(tmp / "bench.json")
        return {"files": {"suite": "bench.json"}, "results": suite["results"], "system": suite["system"],
                "system_after": suite["system_after"], "location": suite["location"],
                **({"board_evaluation": suite["board_evaluation"]} if "board_evaluation" in suite else {})}

    timing = {k: v for k, v in asdict(options).items() if k not in ("timeout_s", "install")}
    return plan.run(Step(f"{target.name}/bench", "bench", {"bench": timing, "threads": threads, "where": location},
                         needs, target_dir / "bench", produce))
