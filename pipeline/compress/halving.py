"""Which candidates are worth training: exact pruning before block-wise distillation, successive halving during it.

Before training, a candidate goes when no choice can use it: it breaks the budget whatever the other blocks take,
or its own teacher block (an exact copy, error 0) is no larger in FLOPs and parameters. Neither changes the
selection's result.

During training, successive halving: at a few points (``rate``^-k of the steps) every candidate still training is
scored on the held-out batches and ranked by its *regret*, how much worse the best choice under the budget becomes
when forced to use it (0 for the current best choice's blocks; a candidate dominated in FLOPs, parameters and
error by another of its block ranks behind it). Per block, the 1/``rate`` with the least regret go on training;
the others keep their last score, which overstates their error, so the selection takes them only if they still
win. This is a heuristic: a candidate that learns late can be dropped. The compression report says what each
decision dropped and the candidate-batches trained against training all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .selection import COSTS, Option, offsets, select


def unusable(options: list[list[Option]], budgets: tuple, fixed: tuple) -> list[list[str | None]]:
    """Per candidate, why no choice under ``budgets`` (max FLOPs, parameters, latency; None: unlimited) can use it
    (None: it may be used). Each block's first option is its teacher block, error 0."""
    cheapest = [[min(getattr(o, cost) for o in block) for cost, *_ in COSTS] for block in options]
    floors = [offset + sum(row[k] for row in cheapest) for k, offset in enumerate(offsets(fixed))]
    reasons = []
    for b, block in enumerate(options):
        teacher = block[0]
        row = []
        for i, option in enumerate(block):
            over = [name for k, ((cost, _, name), budget) in enumerate(zip(COSTS, budgets))
                    if budget is not None and floors[k] - cheapest[b][k] + getattr(option, cost) > budget]
            if over:
                row.append(f"over the {over[0]} budget with the cheapest other blocks")
            elif i and all(getattr(option, cost) >= getattr(teacher, cost) for cost, *_ in COSTS):
                row.append("no smaller than the teacher's own block")
            else:
                row.append(None)
        reasons.append(row)
    return reasons


def regrets(options: list[list[Option]], budgets: tuple, fixed: tuple) -> list[list[float]]:
    """Per candidate: the best summed error of a choice that uses it, minus the best choice's (inf: none fits)."""
    best = select(options, *budgets[:2], fixed, *budgets[2:]).score
    found = []
    for b, block in enumerate(options):
        row = []
        for option in block:
            try:
                forced = select([*options[:b], [option], *options[b + 1:]], *budgets[:2], fixed, *budgets[2:]).score
            except ConfigError:
                forced = math.inf
            row.append(max(0.0, forced - best))
        found.append(row)
    return found


@dataclass(frozen=True)
class Halving:
    """Successive halving for one budget; ``rate`` <= 1 trains every candidate to the end."""

    rate: int
    rungs: int
    budgets: tuple  # max FLOPs, parameters, latency (None: unlimited)
    fixed: tuple  # the head's FLOPs, parameters, latency

    def decision_steps(self, total_steps: int) -> list[int]:
        """After which optimizer steps the candidates still training are ranked."""
        if self.rate <= 1:
            return []
        steps = {max(1, round(total_steps / self.rate ** (self.rungs - r))) for r in range(self.rungs)}
        return sorted(s for s in steps if s < total_steps)

    def survivors(self, options: list[list[Option]], training: list[list[bool]]) -> list[list[bool]]:
        """Which of the ``training`` candidates go on: per block the 1/rate (rounded up) with the least regret."""
        regret = regrets(options, self.budgets, self.fixed)
        kept = []
        for row, flags in zip(regret, training):
            ranked = sorted((r, i) for i, (r, flag) in enumerate(zip(row, flags)) if flag)
            keep = {i for _, i in ranked[: math.ceil(len(ranked) / self.rate)]} | {i for r, i in ranked if r == 0}
            kept.append([i in keep for i in range(len(flags))])
        return kept
