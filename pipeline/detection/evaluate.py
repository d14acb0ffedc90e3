"""Every artifact of a detector on the held-out images: decoded as the board decodes (``board_runtime.detection``),
scored in COCO mAP against the labels and against the reference artifact's own detections (its confident boxes as
the truth), with the recall and IoU of the reference's boxes and the SQNR of each raw output."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from board_runtime.detection import Detections, postprocess
from board_runtime.model import Model

from ..artifacts import Artifact
from .metrics import agreement, classes_seen, coco_map, output_sqnr_db
from .train import truth_of


@dataclass(frozen=True)
class DetectionEvaluation:
    kind: str
    samples: int
    map50_95: float | None  # percent, against the labels (None without labels)
    map50: float | None
    reference_map50_95: float  # percent, against the reference's detections above its display threshold
    reference_map50: float
    recall: float  # percent of the reference's confident boxes this artifact finds (same class, IoU >= 0.5)
    mean_iou: float  # of those matched boxes
    sqnr_db: dict  # per raw output, against the reference's (None: identical)
    drop: float  # points: mAP50-95 against the labels below the reference's; without labels, 100 - reference mAP50
    detections: float  # mean confident detections per image


def evaluate_detectors(artifacts: list[Artifact], base: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                       total: int, threads: int, decoder: dict, labelled: bool, num_classes: int,
                       output_names: list[str]) -> tuple[list[DetectionEvaluation], dict[str, list[Detections]]]:
    """Run every artifact on each batch (one sample at a time: static batch 1); the first artifact is the reference.
    Returns the evaluations and every artifact's detections per image."""
    models = {artifact.kind: Model(artifact.to_dict(), base, threads) for artifact in artifacts}
    raw: dict[str, list[list[np.ndarray]]] = {kind: [] for kind in models}
    found: dict[str, list[Detections]] = {kind: [] for kind in models}
    truth: list[Detections] = []
    shape = None
    with tqdm(total=total, desc=f"evaluate {len(models)} detectors", unit="img", mininterval=1.0) as bar:
        for inputs, labels in batches:
            shape = tuple(inputs.shape[2:])
            for kind, model in models.items():
                for sample in inputs:
                    outputs = model.outputs(sample[None])
                    raw[kind].append(outputs)
                    found[kind].append(postprocess(outputs, shape, decoder))
            truth += truth_of(labels)
            bar.update(len(labels))
    reference_kind = artifacts[0].kind
    num_classes = classes_seen(truth, *found.values(), at_least=num_classes)
    confident = [d.above(decoder["display_threshold"]) for d in found[reference_kind]]
    by_labels = {kind: coco_map(truth, dets, num_classes, shape) for kind, dets in found.items()} if labelled else {}
    results = []
    for kind, dets in found.items():
        versus = coco_map(confident, dets, num_classes, shape)
        matched = agreement(found[reference_kind], dets, decoder["display_threshold"])
        sqnr = {name: output_sqnr_db(np.stack([r[i] for r in raw[reference_kind]]), np.stack([r[i] for r in raw[kind]]))
                for i, name in enumerate(output_names)}
        sqnr = {name: value if np.isfinite(value) else None for name, value in sqnr.items()}
        labels = by_labels.get(kind)
        drop = (by_labels[reference_kind].map50_95 - labels.map50_95) if labels else 100.0 - versus.map50
        results.append(DetectionEvaluation(
            kind=kind, samples=len(truth), map50_95=labels.map50_95 if labels else None,
            map50=labels.map50 if labels else None, reference_map50_95=versus.map50_95, reference_map50=versus.map50,
            recall=matched.recall, mean_iou=matched.mean_iou, sqnr_db=sqnr, drop=drop,
            detections=float(np.mean([len(d.above(decoder["display_threshold"])) for d in dets])),
        ))
    return results, found


SAME_BOX = 1e-4  # box coordinates (in [0, 1]) within this count as the same box: float rounding between machines


def board_detection_evaluation(board: dict[str, list[Detections]], host: dict[str, list[Detections]],
                               truth: list[Detections] | None, decoder: dict, num_classes: int,
                               input_hw: tuple[int, int]) -> dict:
    """Per artifact: mAP50-95 against the labels (``truth``; None without) of the detections the board decoded from its
    own outputs and of this host's, mAP50 of the board's against the host's confident boxes, and the share of samples
    where both found the same detections (same classes, boxes within ``SAME_BOX``)."""
    num_classes = classes_seen(*board.values(), *host.values(), truth or [], at_least=num_classes)
    labelled = truth is not None
    rows = []
    for kind, found in board.items():
        here = host[kind]
        same = [len(a) == len(b) and np.array_equal(a.classes, b.classes) and np.allclose(a.boxes, b.boxes, atol=SAME_BOX)
                for a, b in zip(found, here)]
        confident = [d.above(decoder["display_threshold"]) for d in here]
        rows.append({"kind": kind,
                     "board_map50_95": coco_map(truth, found, num_classes, input_hw).map50_95 if labelled else None,
                     "host_map50_95": coco_map(truth, here, num_classes, input_hw).map50_95 if labelled else None,
                     "host_map50": coco_map(confident, found, num_classes, input_hw).map50,
                     "same_detections": 100.0 * float(np.mean(same)) if same else float("nan")})
    return {"task": "detect", "samples": len(next(iter(host.values()), [])), "artifacts": rows}


def board_detection_sections(evaluation: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """The report's section on the detections the board decoded from its own outputs."""
    note = (f"Each artifact run by the bundle on the board on {evaluation['samples']} held-out images and decoded there "
            "(its own decoding and NMS), the detections brought back and scored here, beside the same artifact run "
            "and decoded on this host by the same runtime code.")
    shown = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [[r["kind"], shown(r["board_map50_95"]), shown(r["host_map50_95"]), f"{r['host_map50']:.2f}",
             f"{r['same_detections']:.1f}"] for r in evaluation["artifacts"]]
    return [("On the board: detections from its own outputs", note,
             ["artifact", "board mAP50-95 %", "host mAP50-95 %", "board mAP50 vs host's boxes %",
              "images with the host's detections %"], rows)]
