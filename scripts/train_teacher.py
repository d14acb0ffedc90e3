#!/usr/bin/env python3
"""Train a built-in teacher through the pipeline's own model step and ship it in ``pipeline/teachers/``.

    python scripts/train_teacher.py                      # fmnist-resnet on Fashion-MNIST, the default recipe
    python scripts/train_teacher.py --model fmnist-resnet --epochs 5

The training is the one ``pipeline run`` would do (same options, data and seed), with a fresh cache and no shipped
teacher consulted; its weights are copied to ``pipeline/teachers/<model>.pt`` beside ``<model>.json``, the record a
run matches its own recipe against (``pipeline/teachers/__init__.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-resnet")
    parser.add_argument("--epochs", type=int, help="override the default recipe's epochs (a run must ask the same)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-teacher-"))
    os.environ.update(PIPELINE_CACHE=str(work / "cache"), PIPELINE_SHIPPED_TEACHERS="0")
    sys.path.insert(0, str(REPO))
    from pipeline.artifacts import sha256_file, write_json
    from pipeline.compute import cpu_summary
    from pipeline.orchestrator import run

    options = {"train": {"epochs": args.epochs}} if args.epochs else {}
    run(stages=["model"], model=args.model, out=str(work / "out"), compress={"enabled": False}, **options)
    [record_file] = (work / "cache" / "teachers").glob("*.json")
    record = json.loads(record_file.read_text())
    shipped = REPO / "pipeline" / "teachers" / f"{args.model}.pt"
    shutil.copyfile(record_file.with_suffix(".pt"), shipped)
    command = "python scripts/train_teacher.py" + (f" --model {args.model}" if args.model != "fmnist-resnet" else "") \
        + (f" --epochs {args.epochs}" if args.epochs else "")
    write_json(shipped.with_suffix(".json"), {
        **{k: v for k, v in record.items() if k != "cached"}, "weights_sha256": sha256_file(shipped),
        "cpu": cpu_summary(), "command": command})
    print(f"{shipped.relative_to(REPO)}: test top-1 {record['test_top1']:.2f} % in {record['seconds']:.0f} s "
          f"({record.get('precision')}, {cpu_summary()})")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
