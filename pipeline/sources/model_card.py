"""What a model file says about itself: its task, how to decode its outputs, its class names, its input size and its
preprocessing, read from the file so that the user need not write them in a configuration.

One row per exporter that writes such a card (``CARD_READERS``). Ultralytics writes into every ONNX export's metadata
``author: Ultralytics``, ``task``, ``imgsz`` ("[640, 640]"), ``names`` ("{0: 'person', ...}", a Python dict's repr)
and, for heads that suppress their own boxes (``nms=True`` exports, YOLOv10, YOLO26), ``end2end``; its models take RGB
pixels in [0, 1], letterboxed. A dense head's one output is split into boxes and scores (``detection.dense_head``), so
that int8 gives each its own scale. The configuration and the flags take precedence over everything read here.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data.preprocess import PreprocessOptions
from ..detection.dense_head import SPLIT_DECODER, dense_head_concat


@dataclass(frozen=True)
class ModelCard:
    origin: str = ""  # who wrote it, for the record and the messages: "the file's Ultralytics metadata"
    task: str | None = None  # a ``config.Task`` value
    decoder: dict | None = None  # a detector's decoder options (``board_runtime.detection``)
    classes: tuple[str, ...] | None = None  # in output order
    image_hw: tuple[int, int] | None = None  # the input size it was exported for
    preprocess: PreprocessOptions | None = None
    split_head: bool = False  # a dense YOLO head the model step splits into boxes and scores (``dense_head``)


@dataclass(frozen=True)
class CardReader:
    name: str
    matches: Callable[[dict[str, str]], bool]  # of the file's metadata
    read: Callable[[dict[str, str], object], ModelCard]  # (metadata, the ONNX ModelProto)


def _literal(text: str | None):
    """A Python literal written as text (Ultralytics writes its dicts and lists so), or None where it is not one."""
    try:
        return ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _ultralytics(metadata: dict[str, str], model) -> ModelCard:
    names, size = _literal(metadata.get("names")), _literal(metadata.get("imgsz"))
    classes = tuple(str(names[k]) for k in sorted(names)) if isinstance(names, dict) and names else None
    image_hw = tuple(int(v) for v in size) if isinstance(size, (list, tuple)) and len(size) == 2 else None
    task = metadata.get("task")
    decoder, split = None, False
    if task == "detect":
        # an end-to-end head gives [1, N, 6]: x1, y1, x2, y2 in input pixels, score, class; the others [1, 4 + C, N]
        args = _literal(metadata.get("args"))
        end2end = str(metadata.get("end2end", "")).lower() == "true" or (isinstance(args, dict) and args.get("nms"))
        split = not end2end and dense_head_concat(model) is not None
        decoder = {"decoder": "yolo-end2end", **({"num_classes": len(classes)} if classes else {})} if end2end \
            else SPLIT_DECODER if split else {"decoder": "yolo"}
    return ModelCard("the file's Ultralytics metadata", task if task in ("detect", "classify") else None, decoder,
                     classes, image_hw, PreprocessOptions(preset="unit"), split)


CARD_READERS = (
    CardReader("ultralytics", lambda metadata: metadata.get("author", "").startswith("Ultralytics"), _ultralytics),
)


NO_CARD = ModelCard()  # a model that says nothing about itself: every field None


def onnx_card(path: Path) -> ModelCard | None:
    """The card of an ONNX file (its metadata; external weight files are not read), or None where no reader knows its
    writer."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # the model step reports an unreadable file, naming it
        return None
    metadata = {p.key: p.value for p in model.metadata_props}
    reader = next((r for r in CARD_READERS if r.matches(metadata)), None)
    return reader.read(metadata, model) if reader else None
