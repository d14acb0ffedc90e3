"""The report's picture of a detector: a few held-out images, one row each, with the reference's boxes and each other
artifact's side by side (confident boxes only), so that what int8 did to the boxes is seen, not only scored."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from board_runtime.detection import Detections
from board_runtime.draw import draw_detections

from ..data import Dataset

PICTURE_IMAGES = 4
PICTURE_SIDE = 192  # pixels per image in the picture


def write_picture(path: Path, test: Dataset, found: dict[str, list[Detections]], score: float,
                  classes: list[str]) -> None:
    """``path`` (PNG): PICTURE_IMAGES held-out images x every artifact's detections above ``score``: those where the
    reference (the first of ``found``) finds most boxes, in their order (on photos where few hold an object, the
    first few may show nothing to compare)."""
    from PIL import Image, ImageDraw

    kinds = list(found)
    confident = np.asarray([len(d.above(score)) for d in found[kinds[0]]])
    chosen = np.sort(np.argsort(-confident, kind="stable")[:PICTURE_IMAGES])
    count = len(chosen)
    images = test.subset(chosen).read()
    header = 18
    sheet = Image.new("RGB", (PICTURE_SIDE * len(kinds), header + PICTURE_SIDE * count), "white")
    pen = ImageDraw.Draw(sheet)
    for column, kind in enumerate(kinds):
        pen.text((column * PICTURE_SIDE + 4, 3), kind, fill="black")
        for row in range(count):
            pixels = (np.clip(images[row], 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
            tile = tile.resize((PICTURE_SIDE, PICTURE_SIDE), Image.NEAREST)
            draw_detections(tile, found[kind][chosen[row]].above(score), classes)
            sheet.paste(tile, (column * PICTURE_SIDE, header + row * PICTURE_SIDE))
    sheet.save(path, format="PNG")
