"""Detection data: COCO JSON, the YOLO txt layout, a folder of unlabelled images, and the built-in set composed from
Fashion-MNIST (garments pasted at random scales on larger canvases).

Images are letterboxed to the model's input (``board_runtime.imaging.letterbox``) when a batch is read, and their
boxes mapped with them once, when the data is scanned. A split's labels are one array per image, (k, 5) float32:
class index, then x1, y1, x2, y2 in [0, 1] of the letterboxed input; an unlabelled folder has none
(``DataSplits.labelled`` is false: the float model's detections are then the only truth).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from board_runtime.imaging import IMAGE_SUFFIXES, letterbox_boxes, load_image

from ..errors import DataError
from .datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArrayImages, Dataset, DataSplits, _find, _read_idx, _split


def box_labels(rows: list[np.ndarray]) -> np.ndarray:
    """Per-image (k, 5) label arrays as one object array (indexable like a classifier's labels)."""
    labels = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        labels[index] = np.asarray(row, np.float32).reshape(-1, 5)
    return labels


class LetterboxedFiles:
    """Image files decoded when read, letterboxed to ``size_hw``."""

    def __init__(self, files: list[Path], mode: str, size_hw: tuple[int, int], interpolation: str = "bilinear"):
        self.files, self.mode, self.size_hw, self.interpolation = files, mode, tuple(size_hw), interpolation
        self.shape = (*self.size_hw, 1 if mode == "L" else 3)

    def read(self, rows: np.ndarray) -> np.ndarray:
        from PIL import UnidentifiedImageError

        images = np.empty((len(rows), *self.shape), np.float32)
        for position, row in enumerate(rows):
            try:
                images[position] = load_image(self.files[row], self.mode, interpolation=self.interpolation,
                                              letterboxed=self.size_hw).reshape(self.shape)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DataError(f"{self.files[row]}: not a readable image ({exc})") from exc
        return images

    def digest(self, digest) -> None:
        digest.update(json.dumps([self.mode, self.size_hw, self.interpolation]).encode())
        for file in self.files:
            digest.update(str(file).encode())
            digest.update(file.read_bytes())


def load_detection(spec: str | Path | None, size_hw: tuple[int, int] | None) -> DataSplits:
    """``spec``: None for the Fashion-MNIST canvases, a COCO ``.json`` (or a folder with ``train.json`` and
    ``val.json``), a YOLO folder (``images/`` and ``labels/``), or a folder of images without labels."""
    if spec is None:
        return fashion_canvases()
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if size_hw is None:
        raise DataError(f"{path}: detection images are letterboxed to the model's input: give its size with "
                        "--image-size H,W (or a model file with a static input)")
    if path.is_file():
        if path.suffix != ".json":
            raise DataError(f"{path}: unsupported detection data; expected a COCO .json, a YOLO folder (images/, "
                            "labels/) or a folder of images")
        return _split_labelled(*_read_coco(path, size_hw), str(path), size_hw)
    if (path / "train.json").is_file() and any((path / n).is_file() for n in ("val.json", "test.json")):
        held_out = next(path / n for n in ("val.json", "test.json") if (path / n).is_file())
        train, test = _read_coco(path / "train.json", size_hw), _read_coco(held_out, size_hw)
        if train[2] != test[2]:
            raise DataError(f"{held_out}: its categories differ from {path / 'train.json'}'s")
        return _splits(train[:2], test[:2], train[2], str(path), size_hw)
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return _read_yolo(path, size_hw)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no images found (expected a COCO .json, a YOLO folder or image files)")
    splits = _split_labelled(files, box_labels([[]] * len(files)), (), str(path), size_hw)
    return DataSplits(splits.train, splits.test, (), str(path), task="detect", labelled=False)


def _mode(file: Path) -> str:
    from PIL import Image

    with Image.open(file) as probe:
        return "L" if probe.mode in ("L", "1", "I", "I;16") else "RGB"


def _splits(train: tuple, test: tuple, classes: tuple[str, ...], source: str, size_hw) -> DataSplits:
    mode = _mode(train[0][0])
    store = LetterboxedFiles([*train[0], *test[0]], mode, size_hw)
    labels = np.concatenate([train[1], test[1]])
    whole = Dataset(store, labels, np.arange(len(labels)))
    return DataSplits(whole.subset(np.arange(len(train[0]))), whole.subset(np.arange(len(train[0]), len(labels))),
                      classes, source, task="detect")


def _split_labelled(files: list[Path], labels: np.ndarray, classes: tuple[str, ...], source: str,
                    size_hw) -> DataSplits:
    if not files:
        raise DataError(f"{source}: no images")
    whole = Dataset(LetterboxedFiles(files, _mode(files[0]), size_hw), labels, np.arange(len(files)))
    train, test = _split(whole)
    return DataSplits(train, test, classes, source, task="detect")


def _read_coco(path: Path, size_hw) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """A COCO detection file: its images (``file_name`` under ``images/`` beside it, or beside it), its boxes
    (crowd boxes left out), its categories in id order."""
    try:
        data = json.loads(path.read_text())
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO detection file ({exc.__class__.__name__}: {exc})") from exc
    index = {c["id"]: i for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    names = tuple(str(c["name"]) for c in sorted(categories, key=lambda c: c["id"]))
    folder = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    boxes: dict[int, list] = {image["id"]: [] for image in images}
    for annotation in annotations:
        if annotation.get("iscrowd"):
            continue
        if annotation.get("category_id") not in index or annotation.get("image_id") not in boxes:
            raise DataError(f"{path}: annotation {annotation.get('id')} names an unknown image or category")
        x, y, w, h = annotation["bbox"]
        boxes[annotation["image_id"]].append((index[annotation["category_id"]], x, y, x + w, y + h))
    files, rows = [], []
    for image in images:
        file = folder / image["file_name"]
        if not file.is_file():
            raise DataError(f"{path}: image {image['file_name']} not found in {folder}")
        found = np.asarray(boxes[image["id"]], np.float32).reshape(-1, 5)
        mapped = letterbox_boxes(found[:, 1:], image["width"], image["height"], size_hw)
        files.append(file)
        rows.append(np.concatenate([found[:, :1], mapped], axis=1))
    return files, box_labels(rows), names


def _yolo_names(root: Path) -> tuple[str, ...] | None:
    import yaml

    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            names = (yaml.safe_load((root / name).read_text()) or {}).get("names")
            if isinstance(names, dict):
                return tuple(str(names[k]) for k in sorted(names))
            if isinstance(names, list):
                return tuple(map(str, names))
    if (root / "classes.txt").is_file():
        return tuple(line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip())
    return None


def _yolo_split(images: Path, labels: Path, size_hw) -> tuple[list[Path], np.ndarray]:
    """Images and their ``class cx cy w h`` (normalised) label files, same stem; no file: no boxes."""
    from PIL import Image

    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    rows = []
    for file in files:
        label = labels / file.relative_to(images).with_suffix(".txt")
        try:
            values = np.loadtxt(label, np.float32, ndmin=2) if label.is_file() and label.stat().st_size else \
                np.zeros((0, 5), np.float32)
        except ValueError as exc:
            raise DataError(f"{label}: not a YOLO label file ({exc})") from exc
        if values.shape[1] != 5:
            raise DataError(f"{label}: expected 5 columns (class cx cy w h), found {values.shape[1]}")
        with Image.open(file) as probe:
            width, height = probe.size
        centre, size = values[:, 1:3] * (width, height), values[:, 3:5] * (width, height)
        pixels = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        rows.append(np.concatenate([values[:, :1], letterbox_boxes(pixels, width, height, size_hw)], axis=1))
    return files, box_labels(rows)


def _read_yolo(root: Path, size_hw) -> DataSplits:
    """``images/{train,val}`` with ``labels/{train,val}`` (or ``images/`` and ``labels/`` alone, split 80/20)."""
    pairs = [(root / "images" / s, root / "labels" / s) for s in ("train", "val")]
    if all(i.is_dir() for i, _ in pairs):
        (train_files, train_labels), (test_files, test_labels) = (_yolo_split(i, l, size_hw) for i, l in pairs)
        found = np.concatenate([train_labels, test_labels])
        classes = _yolo_names(root) or _class_indices(found)
        return _splits((train_files, train_labels), (test_files, test_labels), classes, str(root), size_hw)
    files, labels = _yolo_split(root / "images", root / "labels", size_hw)
    return _split_labelled(files, labels, _yolo_names(root) or _class_indices(labels), str(root), size_hw)


def _class_indices(labels: np.ndarray) -> tuple[str, ...]:
    top = max((int(row[:, 0].max()) for row in labels if len(row)), default=-1)
    return tuple(str(i) for i in range(top + 1))


# The built-in detection set: Fashion-MNIST garments on CANVAS x CANVAS canvases, train from its training images,
# held-out from its test images, composed with a fixed seed.
CANVAS = 96
CANVAS_COUNTS = {"train": 10000, "test": 1000}
GARMENT_SIDES = (16, 44)  # a garment's 28 x 28 image is scaled to this many pixels a side
MAX_GARMENTS = 4


def compose_canvases(images: np.ndarray, labels: np.ndarray, count: int, seed: int,
                     size: int = CANVAS) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 canvases (N, size, size, 1), each of 1 to MAX_GARMENTS garments at random scales, overlapping
    little, and their labels: class, then the tight box of the garment's visible pixels in [0, 1]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    canvases = np.zeros((count, size, size, 1), np.uint8)
    rows = []
    for index in range(count):
        placed: list[tuple[float, ...]] = []
        for _ in range(int(rng.integers(1, MAX_GARMENTS + 1))):
            pick = int(rng.integers(len(images)))
            side = int(rng.integers(GARMENT_SIDES[0], GARMENT_SIDES[1] + 1))
            garment = np.asarray(Image.fromarray(images[pick]).resize((side, side), Image.BILINEAR))
            visible = np.argwhere(garment > 24)
            if not len(visible):
                continue
            (top, left), (bottom, right) = visible.min(0), visible.max(0) + 1
            for _ in range(10):  # a place that overlaps the garments already placed little
                y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = ((x + left) / size, (y + top) / size, (x + right) / size, (y + bottom) / size)
                if all(_iou(box, other[1:]) < 0.2 for other in placed):
                    region = canvases[index, y:y + side, x:x + side, 0]
                    np.maximum(region, garment, out=region)
                    placed.append((float(labels[pick]), *box))
                    break
        rows.append(placed)
    return canvases, box_labels(rows)


def _iou(a: tuple, b: tuple) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fashion_canvases(counts: dict[str, int] = CANVAS_COUNTS) -> DataSplits:
    """The built-in detection set, composed offline from the Debian package's Fashion-MNIST."""
    if not FASHION_MNIST_DIR.is_dir():
        raise DataError(f"{FASHION_MNIST_DIR}: Fashion-MNIST not found; install it with "
                        "'sudo apt-get install -y dataset-fashion-mnist' or pass --data")
    splits = []
    for seed, (prefix, split) in enumerate((("train", "train"), ("t10k", "test"))):
        images = _read_idx(_find(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte"))
        canvases, boxes = compose_canvases(images, labels, counts[split], seed)
        splits.append(Dataset(ArrayImages(canvases), boxes, np.arange(len(boxes))))
    return DataSplits(splits[0], splits[1], FASHION_MNIST_CLASSES, f"fashion-mnist-canvases-{CANVAS}", task="detect")
