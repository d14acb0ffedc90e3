"""Raw images to a model's input tensor, by the bundle's ``preprocess`` entry. The pipeline reads image folders and
normalises with these same functions, so that a photo classified on the board goes through exactly the steps it
went through on the host.

A preprocess entry holds ``mean`` and ``std`` per channel on pixels scaled to [0, 1] (in the model's channel
order), ``channel_order`` (RGB or BGR), and optionally ``resize`` (the shorter side, keeping the aspect ratio)
followed by a ``crop`` (centred square), with ``interpolation`` (bilinear, bicubic or nearest), as timm and
torchvision evaluate. A detector's entry has ``letterbox`` = [H, W] instead: the image scaled to fit, centred on
grey padding (as YOLO exporters feed it), so that its boxes map back to the photo (``unletterbox``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_image(path: str | Path, mode: str = "RGB", resize: int | None = None, crop: int | None = None,
               interpolation: str = "bilinear", size: tuple[int, int] | None = None,
               letterboxed: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as float32 HWC in [0, 1]: shorter side resized to ``resize``, then a centred ``crop`` x ``crop``
    (or, with neither, squashed to ``size`` = (H, W) when given, or fitted into ``letterboxed`` = (H, W) on grey
    padding). Needs Pillow."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise RuntimeError("reading image files needs Pillow: pip install pillow (or pass .npy arrays)") from exc
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[interpolation]
    with Image.open(path) as opened:
        image = opened.convert(mode)
    if letterboxed:
        image = letterbox(image, tuple(letterboxed), resample)
    elif resize:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        long = int(resize * long / short)  # as torchvision's Resize(int) computes the longer side
        image = image.resize((resize, long) if width <= height else (long, resize), resample)
    elif size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), resample)
    if crop:
        width, height = image.size
        if width < crop or height < crop:
            raise ValueError(f"{Path(path).name}: {width}x{height} after resizing is smaller than the {crop}x{crop} crop")
        left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


LETTERBOX_FILL = 114  # the padding's grey, as Ultralytics letterboxes


def letterbox_geometry(width: int, height: int, size_hw: tuple[int, int]) -> tuple[float, float, float]:
    """(scale, left pad, top pad) that fit a ``width`` x ``height`` image into ``size_hw``, centred."""
    scale = min(size_hw[0] / height, size_hw[1] / width)
    return scale, (size_hw[1] - round(width * scale)) / 2.0, (size_hw[0] - round(height * scale)) / 2.0


def letterbox(image, size_hw: tuple[int, int], resample):
    """A Pillow image scaled to fit ``size_hw`` and centred on grey padding."""
    from PIL import Image

    scale, left, top = letterbox_geometry(image.width, image.height, size_hw)
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas = Image.new(image.mode, (size_hw[1], size_hw[0]), (LETTERBOX_FILL,) * len(image.getbands()))
    canvas.paste(scaled, (int(left), int(top)))
    return canvas


def letterbox_boxes(boxes: np.ndarray, width: int, height: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Boxes x1, y1, x2, y2 in pixels of the ``width`` x ``height`` image -> [0, 1] of the letterboxed input."""
    scale, left, top = letterbox_geometry(width, height, size_hw)
    pixels = np.asarray(boxes, np.float32).reshape(-1, 4) * scale + np.asarray([int(left), int(top)] * 2, np.float32)
    return np.clip(pixels / np.asarray([size_hw[1], size_hw[0]] * 2, np.float32), 0.0, 1.0)


def unletterbox(boxes: np.ndarray, width: int, height: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Boxes x1, y1, x2, y2 in [0, 1] of the letterboxed input -> pixels of the ``width`` x ``height`` image."""
    scale, left, top = letterbox_geometry(width, height, size_hw)
    pixels = boxes * np.asarray([size_hw[1], size_hw[0]] * 2, np.float32) - np.asarray([int(left), int(top)] * 2)
    return np.clip(pixels / scale, 0, [width, height, width, height])


def to_input(images: np.ndarray, preprocess: dict) -> np.ndarray:
    """Images (N, H, W[, C], uint8 or float in [0, 1], RGB) -> the model's normalised NCHW float32 input."""
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if x.ndim == 3:
        x = x[..., None]
    if preprocess.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(preprocess["mean"], np.float32)) / np.asarray(preprocess["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def read_for_model(path: str | Path, preprocess: dict, channels: int) -> np.ndarray:
    """One raw image file or ``.npy`` array, as the model takes it (batch of 1, NCHW)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return to_input(np.load(path)[None], preprocess)
    image = load_image(path, "L" if channels == 1 else "RGB", preprocess.get("resize"), preprocess.get("crop"),
                       preprocess.get("interpolation", "bilinear"), letterboxed=preprocess.get("letterbox"))
    return to_input(image[None], preprocess)
