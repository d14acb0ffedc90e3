"""Mixed-precision fallback: when the int8 model disagrees with the float one on more of the calibration samples
than the target's tolerance allows, keep the tensors whose int8 rounding adds most noise at the model's outputs in
float (with the ops that write and read them), one at a time, until it does not. How far two models agree is the
task's (``Judge``): top-1 agreement for a classifier, mAP50 against the float model's boxes for a detector.

A tensor's own rounding error says little about its cost: on EfficientNet-Lite1 the stem's ReLU6 output rounds at
53 dB (79th worst of 81 tensors), yet its noise, through depthwise kernels that sum to almost zero, is about half of
the logits' int8 noise.
So the order is measured at the output (``by_output_impact``). The quantizer (``quantize(excluded_ops, out_path)``)
and the runtime (``Runtime``: outputs and latency of a model file) are passed in, so that the same search serves
ONNX Runtime's QDQ models and TFLite's; this module only runs data.
"""
from __future__ import annotations

import heapq
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from board_runtime.measure import timed_runs

from .runs import ort_session

MAX_KEPT = 8  # tensors kept in float at most; beyond that the fallback stops and says the tolerance is not reached
MAX_TRIALS = 48  # quantized models the search for the most harmful tensors may build and run


@dataclass(frozen=True)
class Harmful:
    """A tensor, the ops that write and read it, and the share of the output's int8 noise its rounding causes."""

    tensor: str
    ops: list[str]
    noise_share: float | None = None  # None where not measured


def with_shares(tensors: list[str], shares: list[float | None] | None) -> list[str]:
    """Each tensor's name with its share of the output's int8 noise, where measured."""
    return [t + (f" ({share:.0%} of the output's int8 noise)" if share is not None else "")
            for t, share in zip(tensors, shares or [None] * len(tensors))]


@dataclass(frozen=True)
class Judge:
    """How the fallback scores a model's outputs against the float model's on the judged samples, in points (100:
    they agree on every sample)."""

    what: str  # as the notes name it
    points: Callable[[list[np.ndarray], list[np.ndarray]], float]  # (outputs, the float model's), each [samples, ...]


def _top1_points(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    samples = len(reference[0])
    top1 = [o.reshape(samples, -1).argmax(1) for o in (outputs[0], reference[0])]
    return float(100 * (top1[0] == top1[1]).mean())


TOP1 = Judge("top-1 agreement with the float model", _top1_points)


@dataclass(frozen=True)
class Fallback:
    samples: int
    agreement_int8: float  # points of the judge's agreement with the float model, on the calibration samples, all in int8
    agreement: float  # the same with ``kept`` in float
    kept: list[str] = field(default_factory=list)  # tensors, in the order they were kept in float
    nodes: list[str] = field(default_factory=list)  # the ops that write and read them, left in float
    noise_shares: list[float | None] = field(default_factory=list)  # of the output's int8 noise, per kept tensor
    reached: bool = True  # within tolerance; if not, the model is left all in int8 and ``kept`` is what was tried
    p50_ms_int8: float | None = None  # single-threaded latency on this host, all in int8 and with ``kept`` in float
    p50_ms: float | None = None
    judged_by: str = TOP1.what

    def to_json(self) -> dict:
        return asdict(self)

    def note(self, tolerance: float) -> str:
        if not self.kept:
            return ""
        named = ", ".join(with_shares(self.kept, self.noise_shares))
        tried = (f"{len(self.kept)} tensors in float ({named}; {len(self.nodes)} ops): {self.judged_by} "
                 f"on {self.samples} calibration samples {self.agreement_int8:.2f}% -> "
                 f"{self.agreement:.2f}%, p50 {self.p50_ms_int8:.3f} -> {self.p50_ms:.3f} ms on this host")
        if self.reached:
            return f"mixed precision within the {tolerance:g}-point tolerance: {tried}"
        return f"left all in int8: mixed precision did not reach the {tolerance:g}-point tolerance with {tried}"


@dataclass(frozen=True)
class Runtime:
    """How to run a model file: its outputs for ``inputs`` (run one sample at a time; each output [samples, ...], in
    the reference model's order and layout), and its single-threaded p50 latency on one sample."""

    outputs: Callable[[Path, np.ndarray], list[np.ndarray]]
    p50_ms: Callable[[Path, np.ndarray], float]


def timed_p50_ms(run: Callable[[], object], runs: int = 50) -> float:
    """The median of ``runs`` timed calls of ``run`` after 5 untimed ones, in ms (the board runtime's timing loop)."""
    return float(np.median(timed_runs(lambda _: run(), None, runs, warmup=5, max_seconds=float("inf"))))


def _ort_outputs(path: Path, inputs: np.ndarray) -> list[np.ndarray]:
    session = ort_session(path, single_thread=True, unfused=True)  # exact int8, whatever this host's kernels
    name = session.get_inputs()[0].name
    runs = [session.run(None, {name: np.array(x[None], np.float32)}) for x in inputs]
    return [np.concatenate(output) for output in zip(*runs)]


def _ort_p50_ms(path: Path, sample: np.ndarray) -> float:
    session = ort_session(path, single_thread=True)
    feed = {session.get_inputs()[0].name: np.array(sample[None], np.float32)}
    return timed_p50_ms(lambda: session.run(None, feed))


ONNX_RUNTIME = Runtime(_ort_outputs, _ort_p50_ms)


def by_output_impact(quantize: Callable[[list[str], Path], None], float_path: Path, trial_path: Path,
                     inputs: np.ndarray, candidates: list[tuple[str, list[str]]], trials: int = MAX_TRIALS,
                     runtime: Runtime = ONNX_RUNTIME) -> Iterator[Harmful]:
    """``candidates`` (tensor, the ops that write and read it; in graph order), the one whose int8 rounding adds most
    noise to the model's outputs on ``inputs`` first, as far as ``trials`` quantized models find them.

    Noise from separate roundings adds up in power, so the noise that keeping a run of tensors in float removes is
    the sum of theirs: the run that removes most is halved, and each half measured, until one tensor is left (best
    first, so the k most harmful of n take about 2 k log2(n) models, not n). With several outputs (a detector's
    boxes and scores) each output's noise counts relative to its own signal."""
    reference = [r.astype(np.float64) for r in runtime.outputs(float_path, inputs)]

    def noise(path: Path) -> float:  # the outputs' noise power, each relative to its signal
        return float(sum(np.square(o - r).sum() / max(np.square(r).sum(), 1e-30)
                         for o, r in zip(runtime.outputs(path, inputs), reference)))

    def removed(start: int, stop: int) -> float:
        quantize(list(dict.fromkeys(op for _, ops in candidates[start:stop] for op in ops)), trial_path)
        return all_int8 - noise(trial_path)

    if not candidates:
        return
    quantize([], trial_path)
    all_int8, built = noise(trial_path), 1
    runs = [(-all_int8, 0, len(candidates))]
    while runs:
        removes, start, stop = heapq.heappop(runs)
        if stop - start == 1:
            yield Harmful(*candidates[start], -removes / all_int8 if all_int8 > 0 else None)
            continue
        if built + 2 > trials:  # no more models: only the single tensors already measured are left to give
            continue
        middle = (start + stop) // 2
        for half in ((start, middle), (middle, stop)):
            heapq.heappush(runs, (-removed(*half), *half))
        built += 2


def keep_in_float(quantize: Callable[[list[str], Path], None], float_path: Path, int8_path: Path,
                  inputs: np.ndarray, candidates: Iterable[Harmful], tolerance: float,
                  runtime: Runtime = ONNX_RUNTIME, judge: Judge = TOP1) -> Fallback:
    """``int8_path`` (all in int8) is replaced by a model with the first ``candidates`` (most harmful first, taken
    as needed) kept in float, as few as reach ``tolerance`` points of disagreement by ``judge``, at most
    ``MAX_KEPT``; when even those do not reach it, ``int8_path`` stays all in int8 and the result says what was
    tried."""
    reference = runtime.outputs(float_path, inputs)
    first = judge.points(runtime.outputs(int8_path, inputs), reference)
    agreement, kept, nodes, shares = first, [], [], []
    if 100 - first <= tolerance:
        return Fallback(len(inputs), first, first, judged_by=judge.what)
    p50_int8 = runtime.p50_ms(int8_path, inputs[0])
    trial, all_int8 = (int8_path.with_name(f"{name}{int8_path.suffix}") for name in ("fallback_trial", "all_int8"))
    shutil.copyfile(int8_path, all_int8)
    with tqdm(total=MAX_KEPT, desc="int8 fallback", unit="tensor", delay=2.0, leave=False) as bar:
        for harmful in candidates:
            nodes = list(dict.fromkeys([*nodes, *harmful.ops]))
            kept.append(harmful.tensor)
            shares.append(harmful.noise_share)
            quantize(nodes, trial)
            agreement = judge.points(runtime.outputs(trial, inputs), reference)
            trial.replace(int8_path)
            bar.update()
            if 100 - agreement <= tolerance or len(kept) == MAX_KEPT:
                break
    p50 = runtime.p50_ms(int8_path, inputs[0])
    reached = 100 - agreement <= tolerance
    if reached:
        all_int8.unlink()
    else:  # not worth its latency: back to all int8
        all_int8.replace(int8_path)
    return Fallback(len(inputs), first, agreement, kept, nodes, shares, reached, p50_int8, p50, judge.what)
