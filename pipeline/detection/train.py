"""Training a dense detector (``nets.DenseDetector``): FCOS-style assignment, IoU-aware class scores, GIoU boxes.

A cell is a positive of a box when its centre lies inside the box and within ``CENTRE_RADIUS`` cells of the box's
centre (the cell nearest to the centre always is, so that no small box goes unlearnt); a cell claimed by several
boxes takes the smallest. Its class score is trained towards the IoU of its predicted box with the box (the
score then ranks boxes by quality, which is what mAP rewards), every other score towards 0, by binary
cross-entropy summed and divided by the number of positives; its box by 1 - GIoU.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from board_runtime.detection import Detections, postprocess

from ..train import Objective
from .metrics import classes_seen, coco_map

CENTRE_RADIUS = 1.5  # cells
BOX_WEIGHT = 2.0


def _pairwise(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of matched boxes (..., 4) xyxy."""
    top_left, bottom_right = torch.maximum(pred[..., :2], truth[..., :2]), torch.minimum(pred[..., 2:], truth[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = lambda b: (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(pred) + area(truth) - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(pred[..., 2:], truth[..., 2:]) - torch.minimum(pred[..., :2], truth[..., :2])).prod(-1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-9)


def padded(labels: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (k, 5) labels as one [B, K, 5] tensor and its [B, K] validity mask."""
    most = max(1, max(len(row) for row in labels))
    truth, valid = np.zeros((len(labels), most, 5), np.float32), np.zeros((len(labels), most), bool)
    for index, row in enumerate(labels):
        truth[index, :len(row)], valid[index, :len(row)] = row, True
    return torch.from_numpy(truth).to(device), torch.from_numpy(valid).to(device)


def assign(centres: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each cell's box index ([B, N], -1 for a negative)."""
    rows, cols = grid
    cx, cy = centres[..., 0:1], centres[..., 1:2]  # [1, N, 1]
    x1, y1, x2, y2 = (truth[:, None, :, i] for i in range(1, 5))  # [B, 1, K]
    inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
    near = ((cx - (x1 + x2) / 2).abs() < CENTRE_RADIUS / cols) & ((cy - (y1 + y2) / 2).abs() < CENTRE_RADIUS / rows)
    claims = inside & near & valid[:, None, :]
    # the cell nearest to each box's centre
    column = (((x1 + x2) / 2 * cols).long().clamp(0, cols - 1))[:, 0]
    row = (((y1 + y2) / 2 * rows).long().clamp(0, rows - 1))[:, 0]
    nearest = torch.zeros_like(claims)
    nearest.scatter_(1, (row * cols + column)[:, None, :], valid[:, None, :])
    claims = claims | nearest
    area = ((x2 - x1) * (y2 - y1)).expand_as(claims)
    cost = torch.where(claims, area, torch.full_like(area, float("inf")))
    best = cost.argmin(-1)
    return torch.where(claims.any(-1), best, torch.full_like(best, -1))


def detection_loss(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, compute) -> torch.Tensor:
    with compute.autocast():
        distances, logits = model.raw(inputs)
    return _labelled_loss(model, inputs, model.decode(distances.float()), logits.float(), labels)


def distillation_loss(student: nn.Module, inputs: torch.Tensor, teacher_raw: tuple[torch.Tensor, torch.Tensor],
                      labels: np.ndarray, temperature: float, alpha: float, compute) -> torch.Tensor:
    """A student detector's fine-tuning loss: ``alpha`` x distillation of the teacher's raw outputs (``teacher_raw``:
    box distances and class logits) + (1 - ``alpha``) x its own loss on the labels. The class scores are matched to
    the teacher's, softened by ``temperature``, by binary cross-entropy; the boxes by 1 - GIoU with the teacher's, each
    cell weighted by the teacher's best class score there (where it sees nothing, its box means nothing); both divided
    by the weights' sum, as the labelled loss divides by its positives."""
    with compute.autocast():
        distances, logits = student.raw(inputs)
    boxes, logits = student.decode(distances.float()), logits.float()
    teacher_distances, teacher_logits = (t.float() for t in teacher_raw)
    weight = torch.sigmoid(teacher_logits).amax(-1)  # [B, N]
    total = weight.sum().clamp(min=1.0)
    soft = torch.sigmoid(teacher_logits / temperature)
    score_kd = nn.functional.binary_cross_entropy_with_logits(logits / temperature, soft, reduction="sum") / total
    _, giou = _pairwise(boxes, student.decode(teacher_distances))
    box_kd = (weight * (1.0 - giou)).sum() / total
    distilled = temperature ** 2 * score_kd + BOX_WEIGHT * box_kd
    return alpha * distilled + (1 - alpha) * _labelled_loss(student, inputs, boxes, logits, labels)


def _labelled_loss(model: nn.Module, inputs: torch.Tensor, boxes: torch.Tensor, logits: torch.Tensor,
                   labels: np.ndarray) -> torch.Tensor:
    """FCOS-style loss of decoded ``boxes`` and class ``logits`` against the labels (the module's docstring)."""
    truth, valid = padded(labels, logits.device)
    rows, cols = inputs.shape[2] // model.STRIDE, inputs.shape[3] // model.STRIDE
    owner = assign(model.centres, truth, valid, (rows, cols))
    positive = owner >= 0
    matched = torch.gather(truth, 1, owner.clamp(min=0)[..., None].expand(-1, -1, 5))  # [B, N, 5]
    iou, giou = _pairwise(boxes, matched[..., 1:])
    target = torch.zeros_like(logits)
    classes = matched[..., 0].long().clamp(0, logits.shape[-1] - 1)
    target.scatter_(2, classes[..., None], torch.where(positive, iou.detach().clamp(min=0.05), 0.0)[..., None])
    count = positive.sum().clamp(min=1)
    score_loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / count
    box_loss = ((1.0 - giou) * positive).sum() / count
    return score_loss + BOX_WEIGHT * box_loss


def flip_boxes(labels: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Labels of images mirrored left-right where ``flipped``."""
    out = labels.copy()
    for index in np.nonzero(flipped)[0]:
        row = labels[index].copy()
        row[:, [1, 3]] = 1.0 - labels[index][:, [3, 1]]
        out[index] = row
    return out


def truth_of(labels: np.ndarray) -> list[Detections]:
    return [Detections(row[:, 1:].astype(np.float32), np.ones(len(row), np.float32), row[:, 0].astype(np.int64))
            for row in labels]


def torch_map(model: nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]], decoder: dict) -> float:
    """mAP50-95 (percent) of a torch detector on (inputs, labels) batches, decoded as the artifacts are."""
    model.eval()
    device = next(model.parameters()).device
    found, truth, shape = [], [], None
    with torch.no_grad():
        for inputs, labels in batches:
            shape = inputs.shape[2:]
            outputs = [o.float().cpu().numpy() for o in model(torch.from_numpy(inputs).to(device))]
            found += [postprocess([o[i:i + 1] for o in outputs], shape, decoder) for i in range(len(inputs))]
            truth += truth_of(labels)
    return coco_map(truth, found, classes_seen(truth, found), tuple(shape)).map50_95


def detection_objective(decoder: dict) -> Objective:
    return Objective(detection_loss, lambda model, batches: torch_map(model, batches, decoder), "mAP50-95",
                     key="test_map50_95", flip=flip_boxes)
