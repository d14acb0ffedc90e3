#!/usr/bin/env python3
"""Searched student vs uniformly width-scaled baselines at equal FLOPs, on Fashion-MNIST.

    python benchmarks/compress_vs_baselines.py --epochs 5 --flops-ratio 0.5 --params-ratio 0.2 --json result.json

Trains, with the same number of epochs for all: the teacher (fmnist-resnet, cross-entropy); the
searched student at the budget (block-wise distillation on --blockwise-subset samples for epochs // 2
epochs, then distillation fine-tuning for the epochs); the teacher's
architecture uniformly width-scaled to the student's FLOPs, trained from scratch with cross-entropy;
and the same width-scaled net trained with plain logit distillation from the teacher. Prints one
table (FLOPs, params, test top-1, ratios to the teacher) and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.compress.compressor import compress, finetune
from pipeline.compress.options import Budget, CompressOptions
from pipeline.config import TrainOptions
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.nets import ResNetCNN, fmnist_resnet
from pipeline.torchmodel import count_flops, count_params
from pipeline.train import evaluate_torch, train_classifier

TEACHER_WIDTHS = (32, 64, 128, 128)
INPUT = (1, 1, 28, 28)


def width_scaled(target_flops: int) -> tuple[ResNetCNN, float]:
    """The teacher's layout with every width times w, w chosen so that FLOPs just reach ``target_flops``."""
    low, high = 0.05, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        net = ResNetCNN(1, 10, tuple(max(4, round(w * mid)) for w in TEACHER_WIDTHS))
        low, high = (mid, high) if count_flops(net, INPUT) <= target_flops else (low, mid)
    return ResNetCNN(1, 10, tuple(max(4, round(w * low)) for w in TEACHER_WIDTHS)), low


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--flops-ratio", type=float, default=0.5)
    parser.add_argument("--params-ratio", type=float, default=0.2)
    parser.add_argument("--train-subset", type=int, default=None, help="train everything on this many samples")
    parser.add_argument("--blockwise-subset", type=int, default=CompressOptions.blockwise_subset,
                        help="samples for block-wise distillation (0: all)")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="also run the search with this block-boundary feature loss in fine-tuning (a row of its own)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load_dataset(None)
    spec = PreprocessSpec.from_images(data.train.read())
    train = data.train.take(args.train_subset)
    order = np.random.default_rng(0).permutation(len(train))
    val_index, fit_index = order[:5000], order[5000:]
    x_test, y_test = spec.apply(data.test.read()), data.test.labels
    rows, started = [], time.perf_counter()

    teacher, _ = train_classifier(fmnist_resnet(), train, data.test, spec, TrainOptions(epochs=args.epochs),
                                  {"model": "fmnist-resnet", "benchmark": "compress", "subset": args.train_subset})
    t_flops, t_params = count_flops(teacher, INPUT), count_params(teacher)
    rows.append(("teacher", t_flops, t_params, evaluate_torch(teacher, x_test, y_test)))

    x_fit, y_fit = spec.apply(train.subset(fit_index).read()), train.labels[fit_index]
    x_val, y_val = spec.apply(train.subset(val_index).read()), train.labels[val_index]
    reports, blockwise = {}, None
    for feature_weight in sorted({0.0, args.feature_weight}):
        options = CompressOptions(budget=Budget(flops_ratio=args.flops_ratio, params_ratio=args.params_ratio),
                                  blockwise_epochs=max(1, args.epochs // 2), finetune_epochs=args.epochs,
                                  patience=args.epochs, blockwise_subset=args.blockwise_subset or None,
                                  feature_weight=feature_weight)
        out = Path(f"benchmarks/.compress_student/feature-weight-{feature_weight:g}")
        shutil.rmtree(out, ignore_errors=True)
        if blockwise:  # the rows differ only in fine-tuning: their block-wise phase is the first row's, resumed
            (out / "resume").mkdir(parents=True)
            shutil.copy(blockwise, out / "resume" / "blockwise.pt")
        student, reports[feature_weight] = compress(teacher, {"model": "fmnist-resnet", "in_channels": 1,
                                                              "num_classes": 10}, x_fit, y_fit, x_val, y_val, options,
                                                    out, out / "resume")
        blockwise = blockwise or out / "resume" / "blockwise.pt"
        name = f"searched student, feature loss x{feature_weight:g}" if feature_weight else "searched student"
        rows.append((name, count_flops(student, INPUT), count_params(student), evaluate_torch(student, x_test, y_test)))
    s_flops = rows[1][1]

    torch.manual_seed(0)  # the baselines' initial weights, whatever the runs before them drew
    scratch, width = width_scaled(s_flops)
    scratch, _ = train_classifier(scratch, train, data.test, spec, TrainOptions(epochs=args.epochs),
                                  {"model": f"width-{width:.3f}", "benchmark": "compress", "subset": args.train_subset})
    rows.append((f"width x{width:.2f}, cross-entropy", count_flops(scratch, INPUT), count_params(scratch),
                 evaluate_torch(scratch, x_test, y_test)))

    torch.manual_seed(0)
    distilled, _ = width_scaled(s_flops)
    kd_options = CompressOptions(finetune_epochs=args.epochs, patience=args.epochs)
    finetune(distilled, teacher, torch.from_numpy(x_fit), torch.from_numpy(y_fit), x_val, y_val, kd_options)
    rows.append((f"width x{width:.2f}, distillation", count_flops(distilled, INPUT), count_params(distilled),
                 evaluate_torch(distilled.eval(), x_test, y_test)))

    print(f"{'model':32s} {'FLOPs':>12s} {'params':>10s} {'top-1':>7s} {'FLOPs/T':>8s} {'params/T':>9s} {'top-1 - T':>9s}")
    for name, flops, params, top1 in rows:
        print(f"{name:32s} {flops:12,d} {params:10,d} {top1:7.2f} {flops / t_flops:8.2f} {params / t_params:9.2f} "
              f"{top1 - rows[0][3]:+9.2f}")
    print(f"total {time.perf_counter() - started:.0f} s; FLOPs count a multiply-add as 2", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"epochs": args.epochs, "rows": [
            {"model": n, "flops": f, "params": p, "top1": a} for n, f, p, a in rows],
            "compression": {f"feature_weight={w:g}": r for w, r in reports.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
