#!/usr/bin/env python3
"""Searched student vs uniformly width-scaled baselines at equal FLOPs and at equal parameters, on Fashion-MNIST,
over several seeds, with the wall time and peak memory of every phase.

    python benchmarks/compress_vs_baselines.py --teacher fmnist-resnet --seeds 0 1 2 --epochs 5 --json resnet.json
    python benchmarks/compress_vs_baselines.py --teacher fmnist-mobilenetv2 --seeds 0 1 2 --epochs 5

Per seed, with the same number of epochs for all: the teacher (cross-entropy); the searched student at the budget
(the pipeline's defaults: block-wise distillation with pruning and successive halving on 12k samples, then
distillation fine-tuning for the epochs); the teacher's architecture uniformly width-scaled to the student's FLOPs
and, apart, to its parameters, each trained from scratch with cross-entropy and with logit distillation from the
teacher. Printed: one row per model with the mean and standard deviation of test top-1 over the seeds, FLOPs and
parameters, wall seconds and peak resident memory of its training (sampled every 0.1 s in this process); then the
searched student's margins. Written as JSON with every seed's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import torch

from pipeline.compress.compressor import compress, finetune
from pipeline.compress.options import Budget, CompressOptions
from pipeline.config import TrainOptions
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.nets import BUILTINS, MobileNetV2, ResNetCNN
from pipeline.torchmodel import count_flops, count_params
from pipeline.train import evaluate_torch, train_classifier

INPUT = (1, 1, 28, 28)
# Each teacher's layout at width w (1.0: the teacher itself).
WIDTH_SCALED = {
    "fmnist-resnet": lambda w: ResNetCNN(1, 10, tuple(max(4, round(c * w)) for c in (32, 64, 128, 128))),
    "fmnist-mobilenetv2": lambda w: MobileNetV2(1, 10, width=0.5 * w, stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1),
                                                last=max(8, round(640 * w))),
}


class PeakMemory:
    """The process's peak resident memory within each ``phase`` (a sampling thread)."""

    def __init__(self):
        self.process, self.current, self.peak = psutil.Process(), None, 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            if self.current:
                self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.1)

    @contextmanager
    def phase(self, record: dict):
        self.current, self.peak, started = True, self.process.memory_info().rss, time.perf_counter()
        yield
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["peak_rss_gb"] = round(self.peak / 1e9, 2)
        self.current = None


def width_scaled(teacher: str, cost: str, target: int) -> tuple[torch.nn.Module, float]:
    """The teacher's layout with every width times w, w the largest whose ``cost`` (flops/params) is <= ``target``."""
    measure = {"flops": lambda net: count_flops(net, INPUT), "params": count_params}[cost]
    low, high = 0.05, 1.0
    for _ in range(25):
        mid = (low + high) / 2
        low, high = (mid, high) if measure(WIDTH_SCALED[teacher](mid)) <= target else (low, mid)
    return WIDTH_SCALED[teacher](low), low


def one_seed(args, seed: int, data, spec, memory: PeakMemory) -> list[dict]:
    train = data.train.take(args.train_subset)
    order = np.random.default_rng(seed).permutation(len(train))
    val_index, fit_index = order[:5000], order[5000:]
    x_test, y_test = spec.apply(data.test.read()), data.test.labels
    x_fit, y_fit = spec.apply(train.subset(fit_index).read()), train.labels[fit_index]
    x_val, y_val = spec.apply(train.subset(val_index).read()), train.labels[val_index]
    rows = []

    def row(name, model, **extra):
        rows.append({"model": name, "flops": count_flops(model, INPUT), "params": count_params(model),
                     "top1": evaluate_torch(model.eval(), x_test, y_test), **extra})
        print(f"seed {seed}: {rows[-1]}", file=sys.stderr)

    record = {}
    torch.manual_seed(seed)
    with memory.phase(record):
        teacher, _ = train_classifier(BUILTINS[args.teacher].factory(), train, data.test, spec,
                                      TrainOptions(epochs=args.epochs, seed=seed),
                                      {"model": args.teacher, "benchmark": "compress", "subset": args.train_subset})
    row("teacher", teacher, **record)

    options = CompressOptions(budget=Budget(flops_ratio=args.flops_ratio, params_ratio=args.params_ratio),
                              finetune_epochs=args.epochs, patience=args.epochs, seed=seed,
                              **({"boundaries": tuple(args.boundaries)} if args.boundaries else {}))
    record = {}
    with memory.phase(record):
        student, report = compress(teacher, {"model": args.teacher, "in_channels": 1, "num_classes": 10}, x_fit, y_fit,
                                   x_val, y_val, options, Path(args.work) / f"{args.teacher}-seed{seed}")
    timings = report["timings_s"]
    row("searched student", student, **record, blockwise_s=timings["blockwise_s"], finetune_s=timings["finetune_s"],
        over_teacher=round((timings["blockwise_s"] + timings["finetune_s"]) / max(rows[0]["seconds"], 1e-9), 2),
        search={k: v for k, v in report["search"].items() if k != "halving"})

    for cost in ("flops", "params"):
        for loss in ("cross-entropy", "distillation"):
            torch.manual_seed(seed)  # the same initial weights for both losses
            net, width = width_scaled(args.teacher, cost, rows[1][cost])
            record = {}
            with memory.phase(record):
                if loss == "cross-entropy":
                    net, _ = train_classifier(net, train, data.test, spec, TrainOptions(epochs=args.epochs, seed=seed),
                                              {"model": f"{args.teacher}-width-{width:.4f}", "benchmark": "compress",
                                               "subset": args.train_subset})
                else:
                    finetune(net, teacher, torch.from_numpy(x_fit), torch.from_numpy(y_fit), x_val, y_val,
                             CompressOptions(finetune_epochs=args.epochs, patience=args.epochs, seed=seed))
            row(f"width-scaled to equal {cost}, {loss}", net, **record, width=round(width, 4))
    return rows


def summary(runs: list[list[dict]]) -> list[dict]:
    table = []
    for index, first in enumerate(runs[0]):
        top1 = [run[index]["top1"] for run in runs]
        table.append({"model": first["model"], "top1_mean": round(statistics.mean(top1), 2),
                      "top1_std": round(statistics.stdev(top1), 2) if len(top1) > 1 else 0.0,
                      "flops": round(statistics.mean(run[index]["flops"] for run in runs)),
                      "params": round(statistics.mean(run[index]["params"] for run in runs)),
                      "seconds": round(statistics.mean(run[index]["seconds"] for run in runs), 1),
                      "peak_rss_gb": max(run[index]["peak_rss_gb"] for run in runs)})
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=sorted(WIDTH_SCALED), default="fmnist-resnet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--flops-ratio", type=float, default=0.5)
    parser.add_argument("--params-ratio", type=float, default=0.2)
    parser.add_argument("--boundaries", nargs="+", help="block starts in the teacher's features (default: every child)")
    parser.add_argument("--train-subset", type=int, default=None, help="train everything on this many samples")
    parser.add_argument("--work", default="benchmarks/.compress_student", help="where the students are written")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # A fresh cache unless one is given: a teacher trained by an earlier run would be read back, not timed.
    os.environ.setdefault("PIPELINE_CACHE", tempfile.mkdtemp(prefix="compress-benchmark-cache-"))
    data = load_dataset(None)
    spec = PreprocessSpec.from_images(data.train.read())
    memory = PeakMemory()
    runs = [one_seed(args, seed, data, spec, memory) for seed in args.seeds]
    table = summary(runs)
    print(f"{args.teacher}, {len(args.seeds)} seed(s), {args.epochs} epochs; FLOPs count a multiply-add as 2")
    print(f"{'model':44s} {'top-1 mean ± std':>17s} {'FLOPs':>12s} {'params':>9s} {'train s':>8s} {'peak GB':>8s}")
    for r in table:
        print(f"{r['model']:44s} {r['top1_mean']:9.2f} ± {r['top1_std']:4.2f} {r['flops']:12,d} {r['params']:9,d} "
              f"{r['seconds']:8.1f} {r['peak_rss_gb']:8.2f}")
    student = [run[1]["top1"] for run in runs]
    for index in range(2, len(table)):
        margin = [s - run[index]["top1"] for s, run in zip(student, runs)]
        print(f"student - {table[index]['model']}: {statistics.mean(margin):+.2f} points (per seed: "
              f"{', '.join(f'{m:+.2f}' for m in margin)})")
    margin = [s - run[0]["top1"] for s, run in zip(student, runs)]
    print(f"student - teacher: {statistics.mean(margin):+.2f} points; block-wise + fine-tuning over the teacher's "
          f"training: {', '.join(str(run[1]['over_teacher']) for run in runs)}")
    if args.json:
        args.json.write_text(json.dumps({"teacher": args.teacher, "epochs": args.epochs, "seeds": args.seeds,
                                         "table": table, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
