"""Evaluate: every artifact on the held-out split against the PyTorch fp32 reference."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.runner import Model

from ..artifacts import REFERENCE_KIND, Artifact
from ..errors import AccuracyError


@dataclass(frozen=True)
class Evaluation:
    kind: str
    samples: int
    top1: float  # percent
    agreement: float  # percent of samples whose top-1 equals the reference's
    max_logit_diff: float  # against the reference's logits
    drop: float  # reference top-1 minus this top-1, in points


def evaluate_artifacts(
    artifacts: list[Artifact], base: Path, inputs_nchw: np.ndarray, labels: np.ndarray, threads: int
) -> list[Evaluation]:
    """Run every artifact on ``inputs_nchw`` one sample at a time (the artifacts have a static batch of 1)."""
    logits = {}
    for artifact in artifacts:
        model = Model(artifact.to_dict(), base, threads)
        rows = [model.predict(sample[None])[0] for sample in tqdm(inputs_nchw, desc=f"evaluate {artifact.kind}",
                                                                  unit="img", mininterval=1.0)]
        logits[artifact.kind] = np.stack(rows).astype(np.float32)
    reference = logits[REFERENCE_KIND]
    ref_top = reference.argmax(1)
    ref_top1 = 100.0 * float((ref_top == labels).mean())
    results = []
    for kind, out in logits.items():
        top = out.argmax(1)
        top1 = 100.0 * float((top == labels).mean())
        results.append(Evaluation(
            kind=kind, samples=len(labels), top1=top1, agreement=100.0 * float((top == ref_top).mean()),
            max_logit_diff=float(np.abs(out - reference).max()), drop=ref_top1 - top1,
        ))
    return results


def check_tolerance(evaluations: list[dict], tolerance: float, target: str) -> None:
    """Fail, naming every artifact whose top-1 fell more than ``tolerance`` points below the reference."""
    failures = [e for e in evaluations if e["drop"] > tolerance]
    if failures:
        worst = ", ".join(f"{e['kind']} drops {e['drop']:.2f} points (top-1 {e['top1']:.2f}%)" for e in failures)
        raise AccuracyError(f"{target}: {worst}; the profile allows {tolerance:g} points below PyTorch fp32")


def to_dicts(evaluations: list[Evaluation]) -> list[dict]:
    return [asdict(e) for e in evaluations]
