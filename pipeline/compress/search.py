"""Candidates per teacher block and their block-wise distillation.

Every candidate maps its teacher block's input to the block's output shape. All candidates of all
blocks train at once from one frozen-teacher forward per batch: each learns to reproduce its block's
output from the teacher's own block input (normalised MSE), so the candidates are independent.
Which blocks are candidates is data (``SearchSpace``), extendable with a user's block factory.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import EpochCheckpoint
from ..compute import Compute, LossScaler, resolve
from ..config import ComputeOptions
from ..nets import BasicBlock
from ..torchmodel import count_flops, count_params
from . import distributed
from .blocks import TeacherBlock, build_block, is_pointwise
from .halving import Halving
from .options import DEFAULT_GRIDS, SearchSpace
from .selection import Option


@dataclass
class Candidate:
    spec: dict[str, Any]  # {"type": ..., builder arguments}; type "teacher" keeps the teacher's block
    module: nn.Module
    flops: int
    params: int
    score: float = float("nan")
    latency_ms: float = 0.0  # from the latency table, under a latency budget
    trainable: bool = True
    history: list[float] = field(default_factory=list)


# Families that stand in only for a teacher block of their own kind.
ONLY_IN_PLACE_OF = {"basic": lambda teacher: isinstance(teacher, BasicBlock), "low_rank": is_pointwise}


def candidate_specs(space: SearchSpace, cin: int, cout: int, stride: int, teacher: nn.Module) -> Iterator[dict]:
    """The candidate specs of ``space`` for a block from ``cin`` to ``cout`` channels at ``stride``."""
    if space.identity and stride == 1 and cin == cout:
        yield {"type": "identity"}
    families = {f: getattr(space, f) for f in DEFAULT_GRIDS if getattr(space, f) is not None}
    for family, grid in {**families, **space.custom}.items():
        if family in ONLY_IN_PLACE_OF and not ONLY_IN_PLACE_OF[family](teacher):
            continue
        for values in itertools.product(*grid.values()):
            args = dict(zip(grid, values))
            if family == "basic":
                args = {"mid": max(4, int(cout * args["width_fraction"]))}
            elif family == "low_rank":
                args = {"rank": max(4, int(min(cin, cout) * args["rank_fraction"]))}
            yield {"type": family, "cin": cin, "cout": cout, "stride": stride, **args}


def make_candidates(block: TeacherBlock, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                    space: SearchSpace) -> list[Candidate]:
    """The teacher block itself first, then (unless frozen) the search space's blocks with the same I/O shapes."""
    teacher = Candidate({"type": "teacher", "block": block.name}, copy.deepcopy(block.module),
                        count_flops(block.module, in_shape), count_params(block.module), score=0.0, trainable=False)
    if block.frozen:
        return [teacher]
    cin, cout = in_shape[1], out_shape[1]
    stride = -(-in_shape[2] // out_shape[2])  # rounded up: a stride-2 block takes 7x7 to 4x4
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
    y, target = y.float(), target.float()  # the loss in fp32 under mixed precision
    return ((y - target) ** 2).mean() / (target ** 2).mean().clamp_min(1e-8)


def options_of(candidates: list[list[Candidate]]) -> list[list[Option]]:
    """What the selection weighs of each candidate."""
    return [[Option(c.score, c.flops, c.params, c.latency_ms) for c in group] for group in candidates]


class CandidateBank(nn.Module):
    """All trainable candidates, as one module for the optimizer and the checkpoint; ``training_flags`` says which of
    them still train (successive halving drops the others)."""

    def __init__(self, candidates: list[list[Candidate]]):
        super().__init__()
        self.index = [(b, i) for b, group in enumerate(candidates) for i, c in enumerate(group) if c.trainable]
        self.members = nn.ModuleList([candidates[b][i].module for b, i in self.index])
        self.training_flags = [True] * len(self.index)

    def backward(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], scaler: LossScaler | None = None,
                 compute: Compute | None = None) -> float:
        """Each training candidate's block loss, back-propagated as soon as it is computed; returns their sum. The
        candidates share no parameters, so the gradients are those of the summed loss, but only one candidate's
        autograd graph is alive at a time instead of all of them (which held ~12 GB for the demo's 79 candidates)."""
        total = 0.0
        for (b, _), member, flag in zip(self.index, self.members, self.training_flags):
            if not flag:
                continue
            with compute.autocast() if compute else contextlib.nullcontext():
                loss = nmse(member(inputs[b]), outputs[b])
            if loss.requires_grad:  # an identity candidate has no weights to train
                scaler.backward(loss) if scaler else loss.backward()
            total += float(loss.detach())
        return total


def score(blocks: list[TeacherBlock], candidates: list[list[Candidate]], held_out: torch.Tensor, batch_size: int,
          compute: Compute, which: set[tuple[int, int]]) -> None:
    """Set the held-out score (normalised MSE, the mean over batches) of the candidates ``which`` names."""
    sums = {key: 0.0 for key in which}
    batches = 0
    with torch.no_grad(), compute.autocast():
        for start in range(0, len(held_out), batch_size):
            inputs, outputs = teacher_features(blocks, compute.inputs(held_out[start : start + batch_size]))
            batches += 1
            for b, i in which:
                sums[b, i] += float(nmse(candidates[b][i].module.eval()(inputs[b]), outputs[b]))
    for (b, i), total in sums.items():
        candidates[b][i].score = total / max(1, batches)


def distill_blockwise(blocks: list[TeacherBlock], candidates: list[list[Candidate]], train: torch.Tensor,
                      held_out: torch.Tensor, epochs: int, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                      checkpoint: EpochCheckpoint | None = None, compute: Compute | None = None,
                      halving: Halving | None = None) -> dict:
    """Train every trainable candidate on its block (with ``halving``, fewer and fewer of them); set each
    candidate's held-out score (normalised MSE).

    Returns how it went: the epochs taken from ``checkpoint`` (an interrupted run's progress), the halving decisions
    and the candidate-batches trained."""
    compute = compute or resolve(ComputeOptions())
    for block in blocks:
        block.module.eval()
    bank = CandidateBank(candidates)
    steps_per_epoch = max(1, len(train) // batch_size)
    total_steps = epochs * steps_per_epoch
    decisions = halving.decision_steps(total_steps) if halving and bank.index else []
    untrained = {(b, i) for b, group in enumerate(candidates) for i, c in enumerate(group)
                 if not c.trainable and math.isnan(c.score)}
    with compute.training(*(block.module for block in blocks), bank) as scaler:
        params = list(bank.parameters())
        optimizer = torch.optim.Adam(params, lr=lr) if params else None
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total_steps) if params else None
        generator = torch.Generator().manual_seed(seed)
        saved = checkpoint.restore(bank, optimizer, schedule, generator) if checkpoint and params else None
        done = saved["epoch"] if saved else 0
        rungs = saved["rungs"] if saved else []
        if saved:
            bank.training_flags = list(saved["training"])
            for (b, i), value in zip(bank.index, saved["scores"]):
                candidates[b][i].score = value
        score(blocks, candidates, held_out, batch_size, compute, untrained)  # an identity's error, for the ranking
        batches_trained = saved["batches_trained"] if saved else 0
        bar = tqdm(total=total_steps, initial=done * steps_per_epoch, unit="batch",
                   desc=f"block-wise distillation ({len(bank.index)} candidates)", disable=not distributed.is_main())
        for epoch in range(done, epochs if params else 0):
            bank.train()
            order = torch.randperm(len(train), generator=generator)
            for step in range(steps_per_epoch):
                batch = train[order[step * batch_size : (step + 1) * batch_size]]
                with compute.autocast():
                    inputs, outputs = teacher_features(blocks, compute.inputs(distributed.shard(batch)))
                optimizer.zero_grad(set_to_none=True)
                loss = bank.backward(inputs, outputs, scaler, compute)
                distributed.average_gradients(bank)
                scaler.step(optimizer)
                schedule.step()
                training = sum(bank.training_flags)
                batches_trained += training
                bar.update(1)
                bar.set_postfix(loss=f"{loss / max(1, training):.4f}", training=training)
                if epoch * steps_per_epoch + step + 1 in decisions:
                    rungs.append(_halve(blocks, candidates, bank, held_out, batch_size, compute, halving,
                                        epoch * steps_per_epoch + step + 1))
                    bank.train()
            if checkpoint:
                checkpoint.save(epoch + 1, bank, optimizer, schedule, generator, training=bank.training_flags,
                                scores=[candidates[b][i].score for b, i in bank.index], rungs=rungs,
                                batches_trained=batches_trained)
        bar.close()
        distributed.sync_buffers(bank)
        score(blocks, candidates, held_out, batch_size, compute,
              {key for key, flag in zip(bank.index, bank.training_flags) if flag})
    return {"resumed_after_epoch": done, "halving": rungs, "candidate_batches": batches_trained,
            "candidate_batches_without_halving": len(bank.index) * total_steps}


def _halve(blocks, candidates, bank: CandidateBank, held_out, batch_size, compute, halving: Halving,
           step: int) -> dict:
    """Score the candidates still training, keep the survivors training; what was decided, for the report."""
    distributed.sync_buffers(bank)  # every process ranks the same candidates alike
    training = {key for key, flag in zip(bank.index, bank.training_flags) if flag}
    score(blocks, candidates, held_out, batch_size, compute, training)
    flags = [[(b, i) in training for i in range(len(group))] for b, group in enumerate(candidates)]
    kept = halving.survivors(options_of(candidates), flags)
    bank.training_flags = [kept[b][i] for b, i in bank.index]
    dropped = [candidates[b][i].spec for b, i in sorted(training) if not kept[b][i]]
    return {"after_step": step, "ranked": len(training), "kept": len(training) - len(dropped), "dropped": dropped}
