#!/usr/bin/env python3
"""Peak memory and time per batch of the block-wise distillation step, for the demo's teacher and search space.

    python benchmarks/blockwise_memory.py --batches 8

All of the demo's candidates (79 for the built-in fmnist-resnet at its default boundaries) train on one teacher forward
per batch of 128 Fashion-MNIST images. Two ways of back-propagating their losses, each in a fresh child process:

- ``summed``: one loss, the sum of every candidate's, and one backward (how the step worked before): every
  candidate's autograd graph is alive at once;
- ``each``: ``CandidateBank.backward``, each candidate's loss back-propagated as soon as it is computed.

Both give the same gradients (the candidates share no parameters; ``tests/test_compress.py`` checks it). Reported:
the child's peak RSS (``ru_maxrss``), the median seconds per batch, and the ratio of the two.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def step(mode: str, batches: int, batch_size: int) -> dict:
    import torch

    from pipeline.compress.blocks import cut_teacher, find_head
    from pipeline.compress.options import SearchSpace
    from pipeline.compress.search import CandidateBank, block_shapes, make_candidates, nmse, teacher_features
    from pipeline.data import PreprocessSpec, load_dataset
    from pipeline.nets import fmnist_resnet

    torch.manual_seed(0)
    teacher = fmnist_resnet().eval()
    blocks, _ = cut_teacher(teacher, None, (), find_head(teacher, (1, 1, 28, 28)))
    candidates = [make_candidates(b, i, o, SearchSpace()) for b, (i, o) in zip(blocks, block_shapes(blocks, (1, 1, 28, 28)))]
    bank = CandidateBank(candidates).train()
    optimizer = torch.optim.Adam(bank.parameters(), lr=3e-3)
    images = load_dataset(None).train.take(batches * batch_size).read()
    x = torch.from_numpy(PreprocessSpec.from_images(images).apply(images))
    times = []
    for start in range(0, batches * batch_size, batch_size):
        began = time.perf_counter()
        inputs, outputs = teacher_features(blocks, x[start : start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        if mode == "summed":
            sum(nmse(m(inputs[b]), outputs[b]) for (b, _), m in zip(bank.index, bank.members)).backward()
        else:
            bank.backward(inputs, outputs)
        optimizer.step()
        times.append(time.perf_counter() - began)
    return {"mode": mode, "candidates": len(bank.index), "batches": batches, "batch_size": batch_size,
            "median_s_per_batch": round(statistics.median(times), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mode", choices=["summed", "each"], help="run one mode here (the parent runs both)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(step(args.mode, args.batches, args.batch_size)))
        return 0
    rows = []
    for mode in ("summed", "each"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--batches", str(args.batches),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    summed, each = rows
    print(f"each / summed: peak RSS {each['peak_rss_mb'] / summed['peak_rss_mb']:.2f}x, "
          f"time per batch {each['median_s_per_batch'] / summed['median_s_per_batch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
