"""A detector's raw output tensors to detections: decoders (one registered row each) and class-aware NMS, numpy only.

Host and board both decode here, so that they produce the same boxes. A decoder turns a model's outputs (batch of
one, in the model's output order) into candidates: boxes (N, 4) as x1, y1, x2, y2 in [0, 1] of the model input, and
scores (N, C) per class; ``postprocess`` then keeps the (box, class) pairs above the score threshold and applies
class-aware non-maximum suppression. A decoder's options are a mapping (the bundle manifest's ``detect`` entry):
``decoder`` names the row, ``outputs`` optionally maps the row's roles to output indices, and the rest are the
row's own options, checked against its ``options`` list so that a typo is an error.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .registry import Registry, did_you_mean

# decode(outputs, input_hw, options) -> (boxes (N, 4) xyxy in [0, 1], scores (N, C))
DecodeFn = Callable[[list, tuple, dict], tuple]


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes x1, y1, x2, y2 in [0, 1] of the model input, scores, class indices."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def above(self, score: float) -> "Detections":
        keep = self.scores >= score
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    def to_json(self) -> dict:
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "classes": self.classes.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Detections":
        return cls(np.asarray(data["boxes"], np.float32).reshape(-1, 4), np.asarray(data["scores"], np.float32),
                   np.asarray(data["classes"], np.int64))


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: DecodeFn
    roles: tuple[str, ...]  # the outputs it reads, in this order unless the options' ``outputs`` maps them
    options: dict = field(default_factory=dict)  # its own options with their defaults


DECODERS: Registry[Decoder] = Registry("decoder")


def register_decoder(row: Decoder) -> Decoder:
    return DECODERS.register(row.name, row)


COMMON = {"decoder": None, "outputs": None, "score_threshold": 0.001, "iou_threshold": 0.5, "max_detections": 100,
          "display_threshold": 0.25}


def check_options(options: dict) -> dict:
    """``options`` with the decoder's defaults filled in; a ValueError names an unknown decoder or option."""
    name = options.get("decoder")
    if not isinstance(name, str) or (name not in DECODERS and ":" not in name):
        raise ValueError(f"decoder: bad value {name!r}{did_you_mean(name, DECODERS)}, expected one of "
                         f"{', '.join(DECODERS)} or package.module:function")
    own = DECODERS[name].options if name in DECODERS else {}
    unknown = sorted(set(options) - set(COMMON) - set(own))
    if unknown:
        raise ValueError(f"decoder '{name}': unknown option '{unknown[0]}'; valid options: "
                         f"{', '.join(sorted((set(COMMON) | set(own)) - {'decoder'}))}")
    return {**COMMON, **own, **options}


def _user_decoder(name: str) -> DecodeFn:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def candidates(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's boxes (N, 4) and per-class scores (N, C) for one image's outputs (each with its batch dim)."""
    options = check_options(options)
    name = options["decoder"]
    if name not in DECODERS:
        boxes, scores = _user_decoder(name)(outputs, input_hw, options)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(len(boxes), -1)
    row = DECODERS[name]
    order = options["outputs"] or list(range(len(row.roles)))
    if len(order) != len(row.roles) or max(order) >= len(outputs):
        raise ValueError(f"decoder '{name}' reads {len(row.roles)} outputs ({', '.join(row.roles)}), the model has "
                         f"{len(outputs)}; map them with 'outputs' (indices in the model's output order)")
    return row.decode([np.asarray(outputs[i], np.float32)[0] for i in order], input_hw, options)


def postprocess(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict) -> Detections:
    """One image's detections: decoded, (box, class) pairs above the score threshold, class-aware NMS."""
    options = check_options(options)
    boxes, scores = candidates(outputs, input_hw, options)
    rows, classes = np.nonzero(scores >= options["score_threshold"])
    if not len(rows):
        return Detections.empty()
    found = Detections(np.clip(boxes[rows], 0.0, 1.0).astype(np.float32), scores[rows, classes].astype(np.float32),
                       classes.astype(np.int64))
    keep = nms(found.boxes, found.scores, found.classes, options["iou_threshold"], options["max_detections"])
    return Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy: (N, M)."""
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


PRE_NMS = 3000  # candidates NMS considers, best first: bounds its cost at a near-zero score threshold


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_detections: int) -> np.ndarray:
    """Indices kept by greedy class-aware NMS, best score first: a box suppresses only boxes of its own class (so
    each class is suppressed alone, with its own IoU matrix)."""
    order = np.argsort(-scores, kind="stable")[:PRE_NMS]
    keep: list[np.ndarray] = []
    for cls in np.unique(classes[order]):
        members = order[classes[order] == cls]  # best first
        overlaps = box_iou(boxes[members], boxes[members]) > iou
        suppressed = np.zeros(len(members), bool)
        kept = []
        for position in range(len(members)):
            if suppressed[position]:
                continue
            kept.append(position)
            if len(kept) == max_detections:
                break
            suppressed |= overlaps[position]
        keep.append(members[kept])
    found = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return found[np.argsort(-scores[found], kind="stable")][:max_detections].astype(np.int64)


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(scores, -60, 60)))
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if activation != "none":
        raise ValueError(f"score_activation: bad value {activation!r}, expected none, sigmoid or softmax")
    return scores


def _xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xyxy":
        return boxes
    if box_format == "cxcywh":
        half = boxes[:, 2:4] / 2.0
        return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
    raise ValueError(f"box_format: bad value {box_format!r}, expected xyxy or cxcywh")


def _normalise(boxes: np.ndarray, input_hw: tuple[int, int], normalised: bool) -> np.ndarray:
    if normalised:
        return boxes
    height, width = input_hw
    return boxes / np.asarray([width, height, width, height], np.float32)


def _class_scores(scores: np.ndarray, options: dict) -> np.ndarray:
    scores = _activate(scores, options["score_activation"])
    return scores[:, 1:] if options["background"] else scores


def decode_boxes_scores(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict):
    """Boxes (N, 4) and scores (N, C) in two outputs (with ``anchors_last``, [4, N] and [C, N]): the built-in
    detector's, exporters' with decoding in the graph, and a split YOLO head's (boxes and scores apart, so that neither
    shares the other's int8 scale)."""
    boxes, scores = outputs
    if options["anchors_last"]:  # boxes [4, N] and scores [C, N], as a split YOLO head gives them
        boxes, scores = boxes.reshape(4, -1).T, scores.reshape(len(scores), -1).T
    boxes = _normalise(_xyxy(boxes.reshape(-1, 4), options["box_format"]), input_hw, options["normalised"])
    return boxes, _class_scores(scores.reshape(len(boxes), -1), options)


register_decoder(Decoder(
    "boxes-scores", decode_boxes_scores, ("boxes", "scores"),
    {"box_format": "xyxy", "normalised": True, "score_activation": "none", "background": False, "anchors_last": False},
))


def decode_yolo(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict):
    """One anchor-free dense head output, YOLOv5/v8-style: [4 + C, N] (v8) or [N, 4 (+1) + C] (v5 with an
    objectness column): centre x, y, width, height (in input pixels unless ``normalised``), then class scores."""
    [head] = outputs
    extra = 1 if options["objectness"] else 0
    if head.shape[0] < head.shape[1] and not options["rows_are_boxes"]:
        head = head.T  # v8's [4 + C, N]
    boxes = _normalise(_xyxy(head[:, :4], "cxcywh"), input_hw, options["normalised"])
    scores = _activate(head[:, 4 + extra:], options["score_activation"])
    if extra:
        scores = scores * _activate(head[:, 4:5], options["score_activation"])
    return boxes, scores


register_decoder(Decoder(
    "yolo", decode_yolo, ("head",),
    {"objectness": False, "normalised": False, "score_activation": "none", "rows_are_boxes": False},
))


def decode_yolo_end2end(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict):
    """Detections already decoded and suppressed in the graph, one per row [N, 6]: x1, y1, x2, y2 (in input pixels
    unless ``normalised``), score, class index (Ultralytics' ``nms=True`` exports, YOLOv10's and YOLO26's end-to-end
    heads). Each row scores its own class only; ``num_classes`` (the model's) else the highest index seen + 1."""
    [rows] = outputs
    rows = rows.reshape(-1, rows.shape[-1])
    if rows.shape[1] < 6:
        raise ValueError(f"expected rows of x1, y1, x2, y2, score, class; got {rows.shape[1]} columns")
    classes = np.clip(rows[:, 5], 0, None).astype(np.int64)
    count = options["num_classes"] or int(classes.max(initial=-1)) + 1
    if len(classes) and classes.max() >= count:
        raise ValueError(f"class index {int(classes.max())} for a model of {count} classes")
    scores = np.zeros((len(rows), count), np.float32)
    scores[np.arange(len(rows)), classes] = rows[:, 4]
    return _normalise(rows[:, :4], input_hw, options["normalised"]), scores


register_decoder(Decoder("yolo-end2end", decode_yolo_end2end, ("detections",),
                         {"normalised": False, "num_classes": None}))


def ssd_anchors(input_hw: tuple[int, int], levels: list[dict]) -> np.ndarray:
    """Anchor centres and sizes (N, 4: cx, cy, w, h, in [0, 1]) for levels ``{"stride": s, "per_cell": k, "sizes":
    [[w, h], ...]}`` (sizes in [0, 1]; without them 1 x 1, the fixed anchors of MediaPipe's face detectors), cell
    by cell, row-major, ``per_cell`` anchors per cell, as SSD and MediaPipe's SsdAnchorsCalculator order them."""
    height, width = input_hw
    anchors = []
    for level in levels:
        stride, per_cell = int(level["stride"]), int(level.get("per_cell", 1))
        sizes = level.get("sizes") or [[1.0, 1.0]] * per_cell
        if len(sizes) != per_cell:
            raise ValueError(f"anchors: a level with per_cell {per_cell} lists {len(sizes)} sizes")
        rows, cols = -(-height // stride), -(-width // stride)
        for y in range(rows):
            for x in range(cols):
                for w, h in sizes:
                    anchors.append(((x + 0.5) / cols, (y + 0.5) / rows, w, h))
    return np.asarray(anchors, np.float32)


def decode_ssd(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict):
    """Box regressions relative to anchors [N, >=4] and class scores [N, C] (SSD, BlazeFace): centre offsets
    and sizes divided by ``scale`` (input pixels per unit, MediaPipe's x/y/w/h scale) or, with ``variances``,
    SSD's encoding (offsets in anchor sizes times the variance, log-sizes); anchors from ``anchors`` levels."""
    regression, scores = outputs
    anchors = ssd_anchors(input_hw, options["anchors"])
    regression = regression.reshape(len(anchors), -1)[:, :4]
    if options["order"] == "yxhw":
        regression = regression[:, [1, 0, 3, 2]]
    if options["variances"]:
        centre_var, size_var = options["variances"]
        centres = anchors[:, :2] + regression[:, :2] * centre_var * anchors[:, 2:]
        sizes = anchors[:, 2:] * np.exp(np.clip(regression[:, 2:] * size_var, -10, 10))
    else:
        scale = np.asarray(options["scale"] or input_hw[::-1], np.float32)  # (x, y) in input pixels per unit
        centres = anchors[:, :2] + regression[:, :2] / scale * anchors[:, 2:]
        sizes = regression[:, 2:] / scale * anchors[:, 2:]
    return _xyxy(np.concatenate([centres, sizes], axis=1), "cxcywh"), _class_scores(
        scores.reshape(len(anchors), -1), options)


register_decoder(Decoder(
    "ssd", decode_ssd, ("regression", "scores"),
    {"anchors": [], "scale": None, "variances": None, "order": "xywh", "score_activation": "sigmoid",
     "background": False},
))


def decode_grid(outputs: list[np.ndarray], input_hw: tuple[int, int], options: dict):
    """Dense grid maps (MTCNN's P-Net): class probabilities [C, H, W] and box regressions [4, H, W]; the cell at
    (y, x) is the ``cell``-pixel window at (stride * x, stride * y), its regression offsets of the window's corners
    in window sizes (x1, y1, x2, y2). The first ``background`` channels are not classes."""
    scores, regression = outputs
    _, rows, cols = scores.shape
    ys, xs = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    stride, cell = float(options["stride"]), float(options["cell"])
    windows = np.stack([xs * stride, ys * stride, xs * stride + cell, ys * stride + cell], axis=-1).reshape(-1, 4)
    boxes = windows + regression.reshape(4, -1).T * cell
    height, width = input_hw
    boxes = boxes / np.asarray([width, height, width, height], np.float32)
    scores = _activate(scores.reshape(scores.shape[0], -1).T, options["score_activation"])
    return boxes, scores[:, int(options["background"]):]


register_decoder(Decoder(
    "grid", decode_grid, ("scores", "regression"),
    {"stride": 2, "cell": 12, "score_activation": "none", "background": 1},
))
