"""Mixed-precision fallback: when the int8 model disagrees with the float one on more of the calibration samples
than the target's tolerance allows, keep its least int8-friendly tensors in float (with the ops that write and read
them), one at a time, until it does not.

The quantizer is passed in (``quantize(excluded_nodes, out_path)``), so that this module only runs data.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .runs import ort_session

MAX_KEPT = 8  # tensors kept in float at most; beyond that the fallback stops and says the tolerance is not reached


@dataclass(frozen=True)
class Fallback:
    samples: int
    agreement_int8: float  # top-1 agreement with the float model, on the calibration samples, all in int8
    agreement: float  # the same with ``kept`` in float
    kept: list[str] = field(default_factory=list)  # tensors, in the order they were kept in float
    nodes: list[str] = field(default_factory=list)  # the ops that write and read them, left in float
    reached: bool = True  # within tolerance; if not, the model is left all in int8 and ``kept`` is what was tried
    p50_ms_int8: float | None = None  # single-threaded latency on this host, all in int8 and with ``kept`` in float
    p50_ms: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def note(self, tolerance: float) -> str:
        if not self.kept:
            return ""
        tried = (f"{len(self.kept)} tensors in float ({', '.join(self.kept)}; {len(self.nodes)} ops): top-1 agreement "
                 f"with the float model on {self.samples} calibration samples {self.agreement_int8:.2f}% -> "
                 f"{self.agreement:.2f}%, p50 {self.p50_ms_int8:.3f} -> {self.p50_ms:.3f} ms on this host")
        if self.reached:
            return f"mixed precision within the {tolerance:g}-point tolerance: {tried}"
        return f"left all in int8: mixed precision did not reach the {tolerance:g}-point tolerance with {tried}"


def _top1(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort_session(path, single_thread=True)
    name = session.get_inputs()[0].name
    return np.array([int(session.run(None, {name: np.array(x[None], np.float32)})[0].argmax()) for x in inputs])


def p50_ms(path: Path, sample: np.ndarray, runs: int = 50) -> float:
    session = ort_session(path, single_thread=True)
    feed = {session.get_inputs()[0].name: np.array(sample[None], np.float32)}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(1000 * np.median(times))


def keep_in_float(quantize: Callable[[list[str], Path], None], float_path: Path, int8_path: Path,
                  inputs: np.ndarray, candidates: list[tuple[str, list[str]]], tolerance: float) -> Fallback:
    """``int8_path`` (all in int8) is replaced by a model with the first ``candidates`` (tensor, its ops; most
    harmful first) kept in float, as few as reach ``tolerance`` top-1 points of disagreement, at most ``MAX_KEPT``;
    when even those do not reach it, ``int8_path`` stays all in int8 and the result says what was tried."""
    reference = _top1(float_path, inputs)
    first = float(100 * (_top1(int8_path, inputs) == reference).mean())
    agreement, kept, nodes = first, [], []
    if 100 - first <= tolerance:
        return Fallback(len(inputs), first, first)
    p50_int8 = p50_ms(int8_path, inputs[0])
    trial, all_int8 = int8_path.with_name("fallback_trial.onnx"), int8_path.with_name("all_int8.onnx")
    shutil.copyfile(int8_path, all_int8)
    with tqdm(total=min(MAX_KEPT, len(candidates)), desc="int8 fallback", unit="tensor", delay=2.0,
              leave=False) as bar:
        for tensor, ops in candidates[:MAX_KEPT]:
            nodes = list(dict.fromkeys([*nodes, *ops]))
            kept.append(tensor)
            quantize(nodes, trial)
            agreement = float(100 * (_top1(trial, inputs) == reference).mean())
            trial.replace(int8_path)
            bar.update()
            if 100 - agreement <= tolerance:
                break
    p50 = p50_ms(int8_path, inputs[0])
    reached = 100 - agreement <= tolerance
    if reached:
        all_int8.unlink()
    else:  # not worth its latency: back to all int8
        all_int8.replace(int8_path)
    return Fallback(len(inputs), first, agreement, kept, nodes, reached, p50_int8, p50)
