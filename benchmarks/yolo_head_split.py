#!/usr/bin/env python3
"""An Ultralytics YOLO file's dense head kept whole or split into boxes and scores, per board: every artifact's mAP50
against the float model's boxes, the share of those boxes it finds, each output's SQNR and its median latency here.

    python benchmarks/yolo_head_split.py yolov8n.onnx photos/ --out /tmp/yolo-split
    python benchmarks/photo_folder.py /tmp/photos   # a folder of real photos, if you have none

Two pipeline runs of the same file and photos (a folder without labels: the float model's confident boxes are the
truth): "split", as the file's Ultralytics metadata makes it (``pipeline.detection.dense_head``: boxes divided by the
input size and scores as two outputs, each with its own int8 scale), and "whole", with ``detect: {decoder: yolo}``
(its one output [1, 4 + C, N], pixels and scores under one scale). A run that misses a board's accuracy gate exits 6
and still writes its report; the table says so. Real YOLOv8n files in the test wheels: NudeNet's (``python -m
tests.wheels``, then unzip ``nudenet/320n.onnx`` from ``tests/.wheels/nudenet-*.whl``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pipeline.compute import cpu_summary

VARIANTS = {"split": {}, "whole": {"detect": {"decoder": "yolo"}}}


def run(variant: str, args) -> tuple[int, float]:
    out = args.out / variant
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pipeline", "run", "--model", str(args.model), "--data", str(args.data),
               "--target", args.targets, "--out", str(out), "--calibration-samples", str(args.calibration_samples),
               "--bench-runs", "50", "--bench-repeats", "1"]
    if VARIANTS[variant]:
        config = out.with_suffix(".yaml")
        config.write_text(json.dumps(VARIANTS[variant]))
        command += ["--config", str(config)]
    started = time.perf_counter()
    code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return code, time.perf_counter() - started


def rows(out: Path, target: str) -> dict[str, dict]:
    report = out / target / "report.json"
    return {r["kind"]: r for r in json.loads(report.read_text())["rows"]} if report.is_file() else {}


def cell(row: dict | None) -> str:
    if not row:
        return "—"
    sqnr = ", ".join(f"{name} {value:.1f}" for name, value in (row.get("sqnr_db") or {}).items() if value is not None)
    return (f"{row['reference_map50']:.1f} / {row['recall']:.0f} % / {sqnr or 'reference'} / "
            f"{row['latency_ms']['p50']:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an Ultralytics detect model exported to ONNX (nms=False)")
    parser.add_argument("data", type=Path, help="a folder of photos")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--targets", default="raspberry-pi-4,coral-edgetpu")
    parser.add_argument("--calibration-samples", type=int, default=64)
    args = parser.parse_args()
    print(cpu_summary())
    codes = {}
    for variant in VARIANTS:
        code, seconds = run(variant, args)
        codes[variant] = code
        print(f"{variant}: exit {code} in {seconds:.0f} s", flush=True)
    print("\nmAP50 vs the float model's boxes / their share found / SQNR dB per output / p50 here")
    print("\n| board | artifact | " + " | ".join(VARIANTS) + " |\n|---|---|" + "---|" * len(VARIANTS))
    for target in args.targets.split(","):
        found = {variant: rows(args.out / variant, target) for variant in VARIANTS}
        for kind in dict.fromkeys(k for table in found.values() for k in table):
            print(f"| {target} | {kind} | " + " | ".join(cell(found[v].get(kind)) for v in VARIANTS) + " |")
    failed = [v for v, code in codes.items() if code == 6]
    if failed:
        print(f"\n{', '.join(failed)}: a board's accuracy gate failed (exit 6); the reports say which")


if __name__ == "__main__":
    main()
