"""Candidates per teacher block and their block-wise distillation.

Every candidate maps its teacher block's input to the block's output shape. All candidates of all
blocks train at once from one frozen-teacher forward per batch: each learns to reproduce its block's
output from the teacher's own block input (normalised MSE), so the candidates are independent.
Which blocks are candidates is data (``SearchSpace``), extendable with a user's block factory.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import EpochCheckpoint
from ..nets import BasicBlock
from ..torchmodel import count_flops, count_params
from . import distributed
from .blocks import TeacherBlock, build_block
from .options import DEFAULT_GRIDS, SearchSpace


@dataclass
class Candidate:
    spec: dict[str, Any]  # {"type": ..., builder arguments}; type "teacher" keeps the teacher's block
    module: nn.Module
    flops: int
    params: int
    score: float = float("nan")
    trainable: bool = True
    history: list[float] = field(default_factory=list)


def candidate_specs(space: SearchSpace, cin: int, cout: int, stride: int, teacher: nn.Module) -> Iterator[dict]:
    """The candidate specs of ``space`` for a block from ``cin`` to ``cout`` channels at ``stride``."""
    if space.identity and stride == 1 and cin == cout:
        yield {"type": "identity"}
    families = {f: getattr(space, f) for f in DEFAULT_GRIDS if getattr(space, f) is not None}
    for family, grid in {**families, **space.custom}.items():
        if family == "basic" and not isinstance(teacher, BasicBlock):
            continue
        for values in itertools.product(*grid.values()):
            args = dict(zip(grid, values))
            if family == "basic":
                args = {"mid": max(4, int(cout * args["width_fraction"]))}
            yield {"type": family, "cin": cin, "cout": cout, "stride": stride, **args}


def make_candidates(block: TeacherBlock, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                    space: SearchSpace) -> list[Candidate]:
    """The teacher block itself first, then (unless frozen) the search space's blocks with the same I/O shapes."""
    teacher = Candidate({"type": "teacher", "block": block.name}, copy.deepcopy(block.module),
                        count_flops(block.module, in_shape), count_params(block.module), score=0.0, trainable=False)
    if block.frozen:
        return [teacher]
    cin, cout = in_shape[1], out_shape[1]
    stride = in_shape[2] // out_shape[2]
    found = [teacher]
    for spec in candidate_specs(space, cin, cout, stride, block.module):
        module = build_block(spec)
        if module is None:  # a user's factory with no block for these shapes
            continue
        with torch.no_grad():
            if tuple(module.eval()(torch.zeros(in_shape)).shape) != tuple(out_shape):
                continue  # e.g. an odd size that a stride-2 depthwise conv rounds differently
        found.append(Candidate(spec, module, count_flops(module, in_shape), count_params(module)))
    return found


def block_shapes(blocks: list[TeacherBlock], input_shape: tuple[int, ...]) -> list[tuple[tuple, tuple]]:
    shapes, x = [], torch.zeros(input_shape)
    with torch.no_grad():
        for block in blocks:
            y = block.module.eval()(x)
            shapes.append((tuple(x.shape), tuple(y.shape)))
            x = y
    return shapes


def teacher_features(blocks: list[TeacherBlock], x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    inputs, outputs = [], []
    with torch.no_grad():
        for block in blocks:
            inputs.append(x)
            x = block.module(x)
            outputs.append(x)
    return inputs, outputs


def nmse(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).mean() / (target ** 2).mean().clamp_min(1e-8)


class CandidateBank(nn.Module):
    """All trainable candidates, as one module for the optimizer and the checkpoint."""

    def __init__(self, candidates: list[list[Candidate]]):
        super().__init__()
        self.index = [(b, i) for b, group in enumerate(candidates) for i, c in enumerate(group) if c.trainable]
        self.members = nn.ModuleList([candidates[b][i].module for b, i in self.index])

    def backward(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
        """Each candidate's block loss, back-propagated as soon as it is computed; returns their sum. The candidates
        share no parameters, so the gradients are those of the summed loss, but only one candidate's autograd graph
        is alive at a time instead of all of them (which held ~12 GB for the demo's 79 candidates)."""
        total = 0.0
        for (b, _), member in zip(self.index, self.members):
            loss = nmse(member(inputs[b]), outputs[b])
            if loss.requires_grad:  # an identity candidate has no weights to train
                loss.backward()
            total += float(loss.detach())
        return total


def distill_blockwise(blocks: list[TeacherBlock], candidates: list[list[Candidate]], train: torch.Tensor,
                      held_out: torch.Tensor, epochs: int, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                      checkpoint: EpochCheckpoint | None = None) -> int:
    """Train every trainable candidate on its block; set each candidate's held-out score (normalised MSE).

    Returns the number of epochs taken from ``checkpoint`` (an interrupted run's progress)."""
    for block in blocks:
        block.module.eval()
    bank = CandidateBank(candidates)
    trainable = len(bank.index)
    params = list(bank.parameters())
    steps_per_epoch = max(1, len(train) // batch_size)
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch) if params else None
    generator = torch.Generator().manual_seed(seed)
    saved = checkpoint.restore(bank, optimizer, schedule, generator) if checkpoint and params else None
    done = saved["epoch"] if saved else 0
    bank.train()
    bar = tqdm(total=epochs * steps_per_epoch, initial=done * steps_per_epoch, unit="batch",
               desc=f"block-wise distillation ({trainable} candidates)", disable=not distributed.is_main())
    for epoch in range(done, epochs if params else 0):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train) - batch_size + 1, batch_size):
            inputs, outputs = teacher_features(blocks, distributed.shard(train[order[start : start + batch_size]]))
            optimizer.zero_grad(set_to_none=True)
            loss = bank.backward(inputs, outputs)
            distributed.average_gradients(bank)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss / trainable:.4f}")
        if checkpoint:
            checkpoint.save(epoch + 1, bank, optimizer, schedule, generator)
    bar.close()
    distributed.sync_buffers(bank)
    sums = [[0.0] * len(group) for group in candidates]
    batches = 0
    with torch.no_grad():
        for start in range(0, len(held_out), batch_size):
            inputs, outputs = teacher_features(blocks, held_out[start : start + batch_size])
            batches += 1
            for b, group in enumerate(candidates):
                for i, c in enumerate(group):
                    sums[b][i] += float(nmse(c.module.eval()(inputs[b]), outputs[b]))
    for b, group in enumerate(candidates):
        for i, c in enumerate(group):
            c.score = sums[b][i] / max(1, batches)
    return done
