"""Evaluate: every artifact on the held-out split against the reference artifact (the run's model as given)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from board_runtime.model import Model

from ..artifacts import Artifact
from ..engine import Step
from ..errors import AccuracyError
from ..formats import FORMATS


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
    """Run every artifact on ``inputs_nchw`` one sample at a time (the artifacts have a static batch of 1); the
    first is the reference."""
    logits = {}
    for artifact in artifacts:
        model = Model(artifact.to_dict(), base, threads)
        rows = [model.predict(sample[None])[0] for sample in tqdm(inputs_nchw, desc=f"evaluate {artifact.kind}",
                                                                  unit="img", mininterval=1.0)]
        logits[artifact.kind] = np.stack(rows).astype(np.float32)
    reference = logits[artifacts[0].kind]
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
    """Fail, naming every artifact whose top-1 fell more than ``tolerance`` points below the reference (the first)."""
    failures = [e for e in evaluations if e["drop"] > tolerance]
    if failures:
        worst = ", ".join(f"{e['kind']} drops {e['drop']:.2f} points (top-1 {e['top1']:.2f}%)" for e in failures)
        reference = FORMATS[evaluations[0]["kind"]].label
        raise AccuracyError(f"{target}: {worst}; the profile allows {tolerance:g} points below {reference}")


def to_dicts(evaluations: list[Evaluation]) -> list[dict]:
    return [asdict(e) for e in evaluations]


def evaluate_step(plan, target, built: list[tuple[Artifact, dict]]) -> dict:
    """Every artifact of ``target`` on the held-out split, gated by the profile's tolerance when the evaluate stage
    was asked for."""
    target_dir = plan.out / target.name
    artifacts = [a for a, _ in built]
    threads = min(target.threads, os.cpu_count() or 1)  # for evaluation on this host

    def produce(tmp: Path) -> dict:
        test = plan.data.test.take(plan.config.eval_samples)
        rows = evaluate_artifacts(artifacts, target_dir, plan.preprocess().apply(test.images), test.labels, threads)
        return {"evaluations": to_dicts(rows)}

    record = plan.run(Step(f"{target.name}/evaluate", "evaluate", {"samples": plan.config.eval_samples},
                           [plan.model_record, *[r for _, r in built]], target_dir / "evaluate", produce))
    if "evaluate" in plan.engine.requested:
        check_tolerance(record["data"]["evaluations"], target.accuracy_tolerance, target.name)
    return record
