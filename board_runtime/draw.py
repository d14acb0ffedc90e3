"""Boxes drawn on an image (Pillow), as ``run_model.py predict`` and the report's picture show detections."""
from __future__ import annotations

import numpy as np

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000",
           "#469990")


def draw_boxes(image, boxes_px: np.ndarray, scores: np.ndarray, classes: np.ndarray, names: list[str]) -> None:
    """Each box (x1, y1, x2, y2 in the image's pixels) outlined in its class's colour, with its name and score."""
    from PIL import ImageDraw

    pen = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 160))
    for box, score, cls in zip(boxes_px, scores, classes):
        colour = PALETTE[int(cls) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        label = f"{names[int(cls)] if int(cls) < len(names) else int(cls)} {score:.2f}"
        pen.text((x1 + 2, max(0.0, y1 - 11)), label, fill=colour)


def draw_detections(image, detections, names: list[str]) -> None:
    """Detections whose boxes are in [0, 1] of ``image`` itself."""
    scale = np.asarray([image.width, image.height] * 2, np.float32)
    draw_boxes(image, detections.boxes * scale, detections.scores, detections.classes, names)
