#!/usr/bin/env python3
"""Wall time and peak memory of ``make demo``'s run (``pipeline run --target raspberry-pi-4``) with a fresh cache,
step by step, and the compression goals of issue 13.

    python benchmarks/demo_time_memory.py --out /tmp/demo --json demo.json

The run is the CLI in a child process, as ``make demo`` runs it once the venv exists, with ``PIPELINE_CACHE`` pointing
to a new empty directory (the shipped teacher is loaded; ``PIPELINE_SHIPPED_TEACHERS=0`` trains it as well). Memory
is sampled every 0.2 s over the whole process tree (the pipeline and its onnx2tf and runner children); each sample is
charged to the step the run last announced (``[run ] <step>``). Step seconds come from the run's own step records.
Printed: the CPU (AVX2 only or AVX-512/bf16 differ 2x; ``ONEDNN_MAX_CPU_ISA=AVX2`` measures the slow case on a fast
one), wall, peak RSS of the tree and of the pipeline process, per step seconds and peak; the teacher's and the
student's test top-1; block-wise distillation plus fine-tuning against the teacher's training time. Goals (issues 13
and 38): wall <= 10 min, peak <= 2 GB, student >= teacher - 0.2 points.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from streaming_memory import tree_rss

from pipeline.compute import cpu_summary

GB = 1e9


def run(out: Path, cache: Path, target: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "pipeline", "run", "--target", target, "--out", str(out), *extra]
    env = {**os.environ, "PIPELINE_CACHE": str(cache)}
    current = {"step": "start"}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def follow() -> None:
        for line in child.stdout:
            if line.startswith("[run ] "):
                current["step"] = line[7:].strip()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    watched = psutil.Process(child.pid)
    peaks: dict[str, int] = {}
    peak_tree = peak_pipeline = 0
    while child.poll() is None:
        try:
            roles = tree_rss(watched)
        except psutil.Error:
            break
        total = sum(roles.values())
        peak_tree, peak_pipeline = max(peak_tree, total), max(peak_pipeline, roles.get("pipeline", 0))
        peaks[current["step"]] = max(peaks.get(current["step"], 0), total)
        time.sleep(0.2)
    child.wait()
    reader.join(timeout=5)
    return {"returncode": child.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_tree_gb": round(peak_tree / GB, 2), "peak_pipeline_gb": round(peak_pipeline / GB, 2),
            "peak_by_step_gb": {step: round(v / GB, 2) for step, v in peaks.items()}}


def step_seconds(out: Path) -> dict[str, float]:
    found = {}
    for record in sorted((out / ".state").glob("*.json")):
        data = json.loads(record.read_text())
        if "seconds" in data:
            found[data["step"]] = data["seconds"]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/demo-bench"))
    parser.add_argument("--cache", type=Path, help="PIPELINE_CACHE (default: a new empty directory: a fresh cache)")
    parser.add_argument("--target", default="raspberry-pi-4")
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more flags for pipeline run (after --)")
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="demo-cache-"))
    result = run(args.out, cache, args.target, args.extra)
    result["step_seconds"] = step_seconds(args.out)
    result["cpu"] = cpu_summary()  # AVX2-only and AVX-512/bf16 CPUs differ 2x here
    [compression] = list((args.out / "shared").glob("student-*/compress/compression.json")) or [None]
    record = args.out / ".state" / "model.json"
    model = json.loads(record.read_text()) if record.is_file() else None
    if compression:
        report = json.loads(compression.read_text())
        teacher_s = (model or {}).get("data", {}).get("training", {}) or {}
        timings = report["timings_s"]
        result["compression"] = {
            "teacher_test_top1": report["teacher"].get("test_top1"), "student_test_top1": report["student"].get("test_top1"),
            "timings_s": timings, "teacher_training_s": teacher_s.get("seconds"), "compute": report.get("compute"),
            "search": {k: v for k, v in report.get("search", {}).items() if k != "halving"},
            "halving": [{k: v for k, v in rung.items() if k != "dropped"} for rung in report.get("search", {}).get(
                "halving", [])],
        }
        if teacher_s.get("seconds"):
            result["compression"]["blockwise_plus_finetune_over_teacher"] = round(
                (timings["blockwise_s"] + timings["finetune_s"]) / teacher_s["seconds"], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
