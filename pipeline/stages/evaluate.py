"""Evaluate: every artifact on the held-out split against the reference artifact (the run's model as given)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from board_runtime.model import Model
from calibration.fallback import with_shares

from ..artifacts import Artifact
from ..engine import Step
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
    artifacts: list[Artifact], base: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]], total: int, threads: int
) -> list[Evaluation]:
    """Run every artifact on each batch of (model inputs NCHW, labels), one sample at a time (the artifacts have a
    static batch of 1), so that a batch is read once for all of them; the first artifact is the reference."""
    models = {artifact.kind: Model(artifact.to_dict(), base, threads) for artifact in artifacts}
    logits: dict[str, list[np.ndarray]] = {kind: [] for kind in models}
    seen = []
    with tqdm(total=total, desc=f"evaluate {len(models)} artifacts", unit="img", mininterval=1.0) as bar:
        for inputs, labels in batches:
            for kind, model in models.items():
                logits[kind].append(model.predict_each(inputs))
            seen.append(labels)
            bar.update(len(labels))
    labels = np.concatenate(seen)
    logits = {kind: np.concatenate(rows) for kind, rows in logits.items()}
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


# What to try when an artifact of this precision loses too much accuracy.
ADVICE = {
    "int8": "try more --calibration-samples, or deploy the fp16/fp32 artifact where the board runs it",
    "fp16": "the model loses range or precision in half precision: deploy the fp32 artifact",
    "fp32": "a float artifact should match the reference: check the export parity and the converter's log",
}


SENSITIVE_NAMED = 3  # an int8 artifact that misses the tolerance names this many of its least int8-friendly tensors


def sensitive_tensors(record: dict) -> str:
    """The tensors of an int8 artifact's step record whose int8 rounding costs most: where its fallback measured
    them, by their share of the output's noise; else by their own rounding (lowest SQNR alone)."""
    fallback = record["data"].get("fallback") or {}
    if fallback.get("kept"):
        return ", ".join(with_shares(fallback["kept"], fallback.get("noise_shares"))[:SENSITIVE_NAMED])
    tensors = [t for t in record["data"].get("sensitivity", {}).get("tensors", []) if t["producer"] != "output"]
    worst = sorted(tensors, key=lambda t: t["alone_db"])[:SENSITIVE_NAMED]
    return ", ".join(f"{t['tensor']} ({t['alone_db']:.1f} dB alone)" for t in worst)


def accuracy_gate(evaluations: list[dict] | None, tolerance: float, reference: str,
                  sensitive: dict[str, str] | None = None, metric: str = "top1") -> dict:
    """Which artifacts fell more than ``tolerance`` points of ``metric`` below the reference (the first), and what
    to try (for an int8 one, with its ``sensitive`` tensors named); ``evaluated`` is false when there was no data."""
    def advice(kind: str) -> str:
        named = (sensitive or {}).get(kind)
        layers = f"; int8 rounding costs it most at {named}: keep those in higher precision where the board " \
                 "allows it" if named else ""
        return ADVICE[FORMATS[kind].precision] + layers

    failing = [{"kind": e["kind"], "drop": e["drop"], "value": e[metric], "advice": advice(e["kind"])}
               for e in evaluations or [] if not e["drop"] <= tolerance]
    return {"passed": not failing, "evaluated": evaluations is not None, "tolerance": tolerance,
            "reference": FORMATS[reference].label, "failing": failing, "metric": METRIC_LABELS[metric]}


# How a gate names the figure it judges, by the evaluation's key.
METRIC_LABELS = {"top1": "top-1", "map50_95": "mAP50-95", "reference_map50": "mAP50 against the reference's boxes"}


def gate_message(gate: dict, target: str) -> str:
    metric = gate.get("metric", "top-1")
    worst = ", ".join(f"{f['kind']} drops {f['drop']:.2f} points ({metric} {f['value']:.2f}%)" for f in gate["failing"])
    return f"{target}: {worst}; the profile allows {gate['tolerance']:g} points below {gate['reference']}"


def evaluate_step(plan, target, built: list[tuple[Artifact, dict]]) -> dict:
    """Every artifact of ``target`` on the held-out split; the record's ``gate`` says which miss the profile's
    tolerance (the run still writes the bundle and the report, then fails). Without data (a model file benchmarked
    alone) nothing is evaluated."""
    target_dir = plan.out / target.name
    artifacts = [a for a, _ in built]
    threads = min(target.threads, os.cpu_count() or 1)  # for evaluation on this host

    def produce(tmp: Path) -> dict:
        if plan.data is None:
            return {"evaluations": None}
        test, spec = plan.data.test.take(plan.config.eval_samples), plan.preprocess()
        batches = ((spec.apply(images), labels) for images, labels in test.batches())
        return plan.task_row.evaluate(plan, artifacts, target_dir, batches, len(test), threads, tmp, test)

    record = plan.run(Step(f"{target.name}/evaluate", "evaluate", {"samples": plan.config.eval_samples},
                           [plan.model_record, *[r for _, r in built]], target_dir / "evaluate", produce))
    sensitive = {a.kind: sensitive_tensors(r) for a, r in built if a.precision == "int8"}
    tolerance, metric = plan.task_row.gate(target, plan.data is None or plan.data.labelled)
    gate = accuracy_gate(record["data"]["evaluations"], tolerance, artifacts[0].kind, sensitive, metric)
    return {**record, "gate": gate}


