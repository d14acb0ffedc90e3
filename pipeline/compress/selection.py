"""Choosing one candidate per block: an exact multiple-choice knapsack (MILP) and its Pareto front."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Option:
    score: float  # distillation error of the candidate on held-out batches (lower is better)
    flops: int
    params: int


@dataclass(frozen=True)
class Selection:
    choice: tuple[int, ...]  # candidate index per block
    score: float
    flops: int
    params: int


def _total(options: list[list[Option]], choice: tuple[int, ...], fixed: tuple[int, int]) -> Selection:
    picked = [options[b][c] for b, c in enumerate(choice)]
    return Selection(choice, sum(p.score for p in picked), fixed[0] + sum(p.flops for p in picked),
                     fixed[1] + sum(p.params for p in picked))


def select(options: list[list[Option]], max_flops: int | None, max_params: int | None,
           fixed: tuple[int, int] = (0, 0)) -> Selection:
    """Minimise the summed scores subject to the budgets, exactly (scipy's HiGHS MILP).

    ``fixed`` is the (FLOPs, parameters) of what is not searched (the head). Raises when no choice fits,
    naming the block whose smallest candidate weighs most against the budget.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [len(o) for o in options]
    flat = [o for block in options for o in block]
    n = len(flat)
    rows, lower, upper = [], [], []
    start = 0
    for size in sizes:  # exactly one candidate per block
        row = np.zeros(n)
        row[start : start + size] = 1
        rows.append(row), lower.append(1), upper.append(1)
        start += size
    for budget, cost, offset in ((max_flops, "flops", fixed[0]), (max_params, "params", fixed[1])):
        if budget is not None:
            rows.append(np.array([getattr(o, cost) for o in flat], float))
            lower.append(-np.inf), upper.append(budget - offset)
    result = milp(
        c=np.array([o.score for o in flat]), constraints=LinearConstraint(np.array(rows), lower, upper),
        integrality=np.ones(n), bounds=Bounds(0, 1),
    )
    if not result.success:
        raise ConfigError(_infeasible(options, max_flops, max_params, fixed))
    chosen = np.round(result.x).astype(int)
    choice, start = [], 0
    for size in sizes:
        choice.append(int(np.argmax(chosen[start : start + size])))
        start += size
    return _total(options, tuple(choice), fixed)


def _infeasible(options, max_flops, max_params, fixed) -> str:
    parts = []
    for budget, cost, offset, unit in ((max_flops, "flops", fixed[0], "FLOPs"), (max_params, "params", fixed[1], "parameters")):
        if budget is None:
            continue
        smallest = [min(getattr(o, cost) for o in block) for block in options]
        floor = offset + sum(smallest)
        if floor > budget:
            worst = int(np.argmax(smallest))
            parts.append(f"the smallest student needs {floor:,} {unit} (block {worst} alone at least "
                         f"{smallest[worst]:,}, the head {offset:,}) but the budget is {budget:,}")
    return "budget below the smallest possible student: " + ("; ".join(parts) or "no choice meets both budgets at once")


def brute_force(options: list[list[Option]], max_flops: int | None, max_params: int | None,
                fixed: tuple[int, int] = (0, 0)) -> Selection | None:
    """Every combination; for checking ``select`` on small instances."""
    best = None
    for choice in itertools.product(*[range(len(o)) for o in options]):
        total = _total(options, choice, fixed)
        if (max_flops is None or total.flops <= max_flops) and (max_params is None or total.params <= max_params):
            if best is None or total.score < best.score:
                best = total
    return best


def pareto_front(options: list[list[Option]], max_params: int | None, fixed: tuple[int, int] = (0, 0),
                 points: int = 24) -> list[Selection]:
    """Best score at a range of FLOPs budgets, reduced to the non-dominated (FLOPs, score) points."""
    low = fixed[0] + sum(min(o.flops for o in block) for block in options)
    high = fixed[0] + sum(max(o.flops for o in block) for block in options)
    found = {}
    for budget in np.unique(np.geomspace(max(low, 1), max(high, 1), points).astype(int)):
        try:
            selection = select(options, int(budget), max_params, fixed)
        except ConfigError:
            continue
        found[selection.choice] = selection
    front = []
    for s in sorted(found.values(), key=lambda s: (s.flops, s.score)):
        if not front or s.score < front[-1].score:
            front.append(s)
    return front
