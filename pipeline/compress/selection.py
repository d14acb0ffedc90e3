"""Choosing one candidate per block: an exact multiple-choice knapsack (MILP) and its Pareto front.

The knapsack has up to three costs, each with its own budget: FLOPs, parameters and, where a latency table was
measured, milliseconds of latency. ``fixed`` is what the part that is not searched (the head) costs, in that order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


# The costs a choice is budgeted on: the attribute of Option and Selection, its unit and its budget's name.
COSTS = (("flops", "FLOPs", "FLOPs"), ("params", "parameters", "parameter"), ("latency_ms", "ms of latency", "latency"))


@dataclass(frozen=True)
class Option:
    score: float  # distillation error of the candidate on held-out batches (lower is better)
    flops: int
    params: int
    latency_ms: float = 0.0  # from the latency table, where one was measured


@dataclass(frozen=True)
class Selection:
    choice: tuple[int, ...]  # candidate index per block
    score: float
    flops: int
    params: int
    latency_ms: float = 0.0


def offsets(fixed: tuple) -> tuple:
    """``fixed`` with every cost it leaves out at 0."""
    return (*fixed, *(0,) * (len(COSTS) - len(fixed)))


def _total(options: list[list[Option]], choice: tuple[int, ...], fixed: tuple) -> Selection:
    picked = [options[b][c] for b, c in enumerate(choice)]
    totals = [offset + sum(getattr(p, cost) for p in picked) for (cost, *_), offset in zip(COSTS, offsets(fixed))]
    return Selection(choice, sum(p.score for p in picked), *totals)


def _fits(total: Selection, budgets: tuple) -> bool:
    return all(budget is None or getattr(total, cost) <= budget for (cost, *_), budget in zip(COSTS, budgets))


def select(options: list[list[Option]], max_flops: int | None, max_params: int | None, fixed: tuple = (0, 0),
           max_latency_ms: float | None = None) -> Selection:
    """Minimise the summed scores subject to the budgets, exactly (scipy's HiGHS MILP).

    ``fixed`` is the (FLOPs, parameters[, latency]) of what is not searched (the head). Raises when no choice fits,
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
    budgets = (max_flops, max_params, max_latency_ms)
    for budget, (cost, *_), offset in zip(budgets, COSTS, offsets(fixed)):
        if budget is not None:
            rows.append(np.array([getattr(o, cost) for o in flat], float))
            lower.append(-np.inf), upper.append(budget - offset)
    result = milp(
        c=np.array([o.score for o in flat]), constraints=LinearConstraint(np.array(rows), lower, upper),
        integrality=np.ones(n), bounds=Bounds(0, 1),
    )
    if not result.success:
        raise ConfigError(_infeasible(options, budgets, fixed))
    chosen = np.round(result.x).astype(int)
    choice, start = [], 0
    for size in sizes:
        choice.append(int(np.argmax(chosen[start : start + size])))
        start += size
    return _total(options, tuple(choice), fixed)


def _infeasible(options, budgets, fixed) -> str:
    parts = []
    for budget, (cost, unit, _), offset in zip(budgets, COSTS, offsets(fixed)):
        if budget is None:
            continue
        smallest = [min(getattr(o, cost) for o in block) for block in options]
        floor = offset + sum(smallest)
        if floor > budget:
            worst = int(np.argmax(smallest))
            parts.append(f"the smallest student needs {_amount(floor)} {unit} (block {worst} alone at least "
                         f"{_amount(smallest[worst])}, the head {_amount(offset)}) but the budget is {_amount(budget)}")
    return "budget below the smallest possible student: " + ("; ".join(parts) or "no choice meets all budgets at once")


def _amount(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3g}"


def brute_force(options: list[list[Option]], max_flops: int | None, max_params: int | None,
                fixed: tuple = (0, 0), max_latency_ms: float | None = None) -> Selection | None:
    """Every combination; for checking ``select`` on small instances."""
    best = None
    for choice in itertools.product(*[range(len(o)) for o in options]):
        total = _total(options, choice, fixed)
        if _fits(total, (max_flops, max_params, max_latency_ms)):
            if best is None or total.score < best.score:
                best = total
    return best


def pareto_front(options: list[list[Option]], max_params: int | None, fixed: tuple = (0, 0),
                 points: int = 24, max_latency_ms: float | None = None) -> list[Selection]:
    """Best score at a range of FLOPs budgets, reduced to the non-dominated (FLOPs, score) points."""
    low = fixed[0] + sum(min(o.flops for o in block) for block in options)
    high = fixed[0] + sum(max(o.flops for o in block) for block in options)
    found = {}
    for budget in np.unique(np.geomspace(max(low, 1), max(high, 1), points).astype(int)):
        try:
            selection = select(options, int(budget), max_params, fixed, max_latency_ms)
        except ConfigError:
            continue
        found[selection.choice] = selection
    front = []
    for s in sorted(found.values(), key=lambda s: (s.flops, s.score)):
        if not front or s.score < front[-1].score:
            front.append(s)
    return front
