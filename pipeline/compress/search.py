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
from ..errors import ConfigError, ModelError
from ..models import BasicBlock, count_flops, count_params, import_callable
from . import distributed
from .blocks import TeacherBlock, build_block


@dataclass
class Candidate:
    spec: dict[str, Any]  # {"type": ..., builder arguments}; type "teacher" keeps the teacher's block
    module: nn.Module
    flops: int
    params: int
    score: float = float("nan")
    trainable: bool = True
    history: list[float] = field(default_factory=list)


# The built-in families. A grid maps each argument of the family's builder (besides cin, cout, stride) to
# the values to try; "basic" narrows the teacher's own basic block to width_fraction x cout inside.
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    "inverted_residual": {"expansion": (1, 2, 4, 6), "kernel": (3, 5), "depth": (1, 2)},
    "separable": {"kernel": (3, 5)},
    "basic": {"width_fraction": (0.5, 0.25)},
}


def _valid_value(argument: str, value: Any, builtin: bool) -> bool:
    if not builtin:  # a user's factory checks its own arguments
        return value is not None
    if isinstance(value, bool):
        return False
    if argument == "width_fraction":
        return isinstance(value, (int, float)) and 0 < value <= 1
    return isinstance(value, int) and value >= 1


def _grid(where: str, grid: Any, default: dict[str, tuple] | None) -> dict[str, tuple]:
    """A validated grid; a built-in family's (``default`` given) takes its defaults for arguments left out."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: bad value {grid!r}, expected a mapping of argument to values (or null to drop it)")
    builtin = default is not None
    if builtin and set(grid) - set(default):
        raise ConfigError(f"{where}: unknown argument(s) {', '.join(sorted(set(grid) - set(default)))}; "
                          f"valid: {', '.join(default)}")
    checked = dict(default or {})
    for argument, values in grid.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values or not all(_valid_value(argument, v, builtin) for v in values):
            expected = ("fractions in (0, 1]" if argument == "width_fraction" else "positive integers") if builtin \
                else "values"
            raise ConfigError(f"{where}.{argument}: bad value {list(values)!r}, expected a non-empty list of {expected}")
        checked[argument] = values
    return checked


@dataclass(frozen=True)
class SearchSpace:
    """The student blocks tried for every teacher block, besides the teacher's own block.

    Every combination of a family's grid is a candidate; a family set to None (YAML ``null``) is left out.
    ``custom`` adds a user's blocks, ``{"package.module:factory": {argument: [values]}}``: the factory is
    called as ``factory(cin=..., cout=..., stride=..., **values)`` and returns an ``nn.Module`` mapping that
    input to that output shape, or None where it has no such block; ``student.json`` names it to rebuild it.
    """

    identity: bool = True  # where a block keeps its input's shape
    inverted_residual: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["inverted_residual"])
    separable: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["separable"])
    basic: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["basic"])  # teacher basic blocks
    custom: dict[str, dict[str, tuple]] = field(default_factory=dict)

    def __post_init__(self):
        where = "compress.search_space"
        if not isinstance(self.identity, bool):
            raise ConfigError(f"{where}.identity: bad value {self.identity!r}, expected true or false")
        for family, default in DEFAULT_GRIDS.items():
            if getattr(self, family) is not None:
                object.__setattr__(self, family, _grid(f"{where}.{family}", getattr(self, family), default))
        if not isinstance(self.custom, dict):
            raise ConfigError(f"{where}.custom: bad value {self.custom!r}, expected a mapping of "
                              "package.module:factory to its grid")
        custom = {}
        for ref, grid in self.custom.items():
            if ":" not in str(ref):
                raise ConfigError(f"{where}.custom: bad key {ref!r}, expected package.module:factory")
            try:
                import_callable(ref)
            except ModelError as exc:
                raise ConfigError(f"{where}.custom: {exc}") from exc
            custom[ref] = _grid(f"{where}.custom.{ref}", grid or {}, None)
        object.__setattr__(self, "custom", custom)

    def specs(self, cin: int, cout: int, stride: int, teacher: nn.Module) -> Iterator[dict]:
        """The candidate specs for a block from ``cin`` to ``cout`` channels at ``stride``."""
        if self.identity and stride == 1 and cin == cout:
            yield {"type": "identity"}
        families = {f: getattr(self, f) for f in DEFAULT_GRIDS if getattr(self, f) is not None}
        for family, grid in {**families, **self.custom}.items():
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
    for spec in space.specs(cin, cout, stride, block.module):
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
    """All trainable candidates as one module whose forward is their summed block losses (one DDP unit)."""

    def __init__(self, candidates: list[list[Candidate]]):
        super().__init__()
        self.index = [(b, i) for b, group in enumerate(candidates) for i, c in enumerate(group) if c.trainable]
        self.members = nn.ModuleList([candidates[b][i].module for b, i in self.index])

    def forward(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> torch.Tensor:
        return sum(nmse(m(inputs[b]), outputs[b]) for (b, _), m in zip(self.index, self.members))


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
    trained = bank
    bank = distributed.wrap(bank.train())
    bar = tqdm(total=epochs * steps_per_epoch, initial=done * steps_per_epoch, unit="batch",
               desc=f"block-wise distillation ({trainable} candidates)", disable=not distributed.is_main())
    for epoch in range(done, epochs if params else 0):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train) - batch_size + 1, batch_size):
            inputs, outputs = teacher_features(blocks, distributed.shard(train[order[start : start + batch_size]]))
            loss = bank(inputs, outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item() / trainable:.4f}")
        if checkpoint:
            checkpoint.save(epoch + 1, trained, optimizer, schedule, generator)
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
