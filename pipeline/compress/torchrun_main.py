"""Compress under torchrun: ``torchrun --nproc_per_node 2 -m pipeline.compress.torchrun_main --weights T.pt --out D``.

Every process loads the same data and teacher, trains its share of each batch, and process 0 writes the
student; each process also writes the sha256 of its final student weights (``rank<N>.sha256``), which
must agree.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import torch

from pipeline.compute import resolve
from pipeline.config import ComputeOptions
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.sources import ModelSource, build_model

from . import distributed
from .compressor import compress
from .options import Budget, CompressOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-resnet")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=None, help="as pipeline's --data (default: Fashion-MNIST)")
    parser.add_argument("--train-subset", type=int, default=12000)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--flops-ratio", type=float, default=0.5)
    parser.add_argument("--params-ratio", type=float, default=0.5)
    parser.add_argument("--blockwise-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (each process takes cuda:LOCAL_RANK)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    args = parser.parse_args()
    compute = resolve(ComputeOptions(args.device, args.precision))
    distributed.initialise(cuda=compute.device.type == "cuda")
    torch.set_num_threads(1)
    data = load_dataset(args.data)
    train = data.train.take(args.train_subset + args.val_samples, seed=0)
    spec = PreprocessSpec.from_batches(images for images, _ in data.train.batches(4096))
    x, y = spec.apply(train.read()), train.labels
    teacher = build_model(ModelSource(args.model, args.weights), 1, len(data.classes))
    options = CompressOptions(budget=Budget(flops_ratio=args.flops_ratio, params_ratio=args.params_ratio),
                              blockwise_epochs=args.blockwise_epochs, finetune_epochs=args.finetune_epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    student, report = compress(teacher, {"model": args.model, "in_channels": 1, "num_classes": len(data.classes),
                                         "preprocess": spec.to_dict()},
                               x[args.val_samples :], y[args.val_samples :], x[: args.val_samples],
                               y[: args.val_samples], options, args.out, compute=compute)
    buffer = io.BytesIO()
    torch.save(student.state_dict(), buffer)
    (args.out / f"rank{distributed.rank()}.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest())
    if distributed.is_main():
        (args.out / "compression.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
