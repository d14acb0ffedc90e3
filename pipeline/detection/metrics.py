"""Detection metrics: COCO mAP (faster-coco-eval, the COCO evaluator re-implemented in C++ with pycocotools' exact
figures), against labels or against another artifact's detections, plus matched-box IoU and recall.

Boxes are x1, y1, x2, y2 in [0, 1] of the model input; they are scaled to the input's pixels before scoring, so
that COCO's small/medium/large areas and its 1e-? box tolerances mean what they mean on images.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from board_runtime.detection import Detections, box_iou, check_options, postprocess
from calibration.fallback import Judge
from calibration.runs import sqnr_db


@dataclass(frozen=True)
class MeanAP:
    map50_95: float  # percent, COCO's mAP over IoU 0.50:0.05:0.95
    map50: float  # percent, at IoU 0.5
    images: int
    boxes: int  # ground-truth boxes scored against


def _coco_box(box: np.ndarray, width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box * np.asarray([width, height, width, height]))
    return [x1, y1, x2 - x1, y2 - y1]


def classes_seen(*groups: list[Detections], at_least: int = 1) -> int:
    """The number of classes to score with: ``at_least`` (the data's), or more where boxes name higher class ids (an
    unlabelled folder names none: the decoder's say)."""
    return max([at_least, *(int(d.classes.max()) + 1 for group in groups for d in group if len(d))])


def coco_map(truth: list[Detections], found: list[Detections], num_classes: int, input_hw: tuple[int, int]) -> MeanAP:
    """COCO mAP of ``found`` (per image, scores kept) against ``truth`` (per image; scores ignored)."""
    from faster_coco_eval import COCO, COCOeval_faster

    height, width = input_hw
    images = [{"id": i + 1, "width": width, "height": height} for i in range(len(truth))]
    annotations, results = [], []
    for image, (gt, dt) in enumerate(zip(truth, found), start=1):
        for box, cls in zip(gt.boxes, gt.classes):
            xywh = _coco_box(box, width, height)
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(cls) + 1,
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, score, cls in zip(dt.boxes, dt.scores, dt.classes):
            results.append({"image_id": image, "category_id": int(cls) + 1, "bbox": _coco_box(box, width, height),
                            "score": float(score)})
    if not annotations:
        return MeanAP(float("nan"), float("nan"), len(truth), 0)
    if not results:
        return MeanAP(0.0, 0.0, len(truth), len(annotations))
    with contextlib.redirect_stdout(io.StringIO()):  # the evaluator prints its summary table
        ground = COCO({"images": images, "annotations": annotations,
                       "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]})
        evaluator = COCOeval_faster(ground, ground.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return MeanAP(100.0 * max(0.0, float(stats[0])), 100.0 * max(0.0, float(stats[1])), len(truth), len(annotations))


@dataclass(frozen=True)
class Agreement:
    """How well an artifact reproduces the reference's confident boxes."""

    recall: float  # percent of the reference's boxes matched (same class, IoU >= 0.5)
    mean_iou: float  # mean IoU of the matched pairs


def agreement(reference: list[Detections], found: list[Detections], score: float) -> Agreement:
    """Greedy same-class matching, per image, of the reference's boxes above ``score`` to this artifact's."""
    matched, total, ious = 0, 0, []
    for ref, got in zip(reference, found):
        ref, got = ref.above(score), got.above(score)
        total += len(ref)
        if not len(ref) or not len(got):
            continue
        overlap = box_iou(ref.boxes, got.boxes) * (ref.classes[:, None] == got.classes[None, :])
        taken = np.zeros(len(got), bool)
        for row in np.argsort(-ref.scores):
            candidates = np.where(taken, -1.0, overlap[row])
            best = int(candidates.argmax())
            if candidates[best] >= 0.5:
                taken[best] = True
                matched += 1
                ious.append(float(candidates[best]))
    return Agreement(100.0 * matched / total if total else float("nan"), float(np.mean(ious)) if ious else float("nan"))


def output_sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """SQNR of ``other`` against ``reference`` (one output over all images), in dB (inf when equal)."""
    reference, other = reference.astype(np.float64), other.astype(np.float64)
    return sqnr_db(float(np.square(reference).sum()), float(np.square(reference - other).sum()))


def reference_map50_judge(decoder: dict, input_hw: tuple[int, int]) -> Judge:
    """The int8 fallback's judge for a detector: the mAP50 of a model's detections against the float model's
    confident ones (the evaluation's "mAP50 vs float"), decoded as the board decodes them. Samples where the float
    model finds nothing confident count as agreeing."""
    decoder = check_options(decoder)
    decoded: list = [None, []]  # the float outputs last judged against, and their boxes: decoded once, not per trial

    def detections(raw: list[np.ndarray]) -> list[Detections]:
        return [postprocess([o[i:i + 1] for o in raw], input_hw, decoder) for i in range(len(raw[0]))]

    def points(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
        if decoded[0] is not reference[0]:
            decoded[:] = [reference[0], [d.above(decoder["display_threshold"]) for d in detections(reference)]]
        truth, found = decoded[1], detections(outputs)
        scored = coco_map(truth, found, classes_seen(truth, found), input_hw).map50
        return 100.0 if np.isnan(scored) else scored

    return Judge("mAP50 against the float model's boxes", points)
