"""Dataset readers: Fashion-MNIST IDX files, image-folder trees and ``.npz`` archives.

A split is read in batches, as float32 NHWC in [0, 1] with int64 labels: arrays (IDX, ``.npz``) stay in memory as
they were stored (uint8 is not widened), and image folders are decoded when a batch is read, so no split is ever
held whole as float32. Labels are always in memory.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from board_runtime.imaging import IMAGE_SUFFIXES, load_image

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
HELD_OUT_FRACTION = 0.2
BATCH = 64  # images per batch read from a split


class ArrayImages:
    """Images held in memory as stored: uint8 (scaled when read) or float32 in [0, 1], NHWC."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])

    def read(self, rows: np.ndarray) -> np.ndarray:
        images = self.array[rows]
        return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32, copy=False)

    def digest(self, digest) -> None:
        digest.update(np.ascontiguousarray(self.array).tobytes())


class ImageFiles:
    """Image files decoded when read, resized and cropped by the model's recipe (or squashed to ``size``)."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int] | None, recipe: dict):
        self.files, self.mode, self.size, self.recipe = files, mode, size, recipe
        self.shape = self._decode(files[0]).shape  # every image must have it (a crop makes sure)

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import UnidentifiedImageError

        try:
            return load_image(path, self.mode, size=self.size, **self.recipe)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc

    def read(self, rows: np.ndarray) -> np.ndarray:
        images = np.empty((len(rows), *self.shape), np.float32)
        for position, row in enumerate(rows):
            image = self._decode(self.files[row])
            if image.shape != self.shape:
                raise DataError(f"{self.files[row]}: {image.shape[1]}x{image.shape[0]} after resizing, unlike the "
                                f"{self.shape[1]}x{self.shape[0]} of {self.files[0].name}; give a centre crop (--crop) "
                                "so that every image has one size")
            images[position] = image
        return images

    def digest(self, digest) -> None:
        digest.update(json.dumps([self.mode, self.size, self.recipe], sort_keys=True).encode())
        for file in self.files:
            digest.update(str(file).encode())
            digest.update(file.read_bytes())


@dataclass(frozen=True)
class Dataset:
    """Some of a store's images (``rows``, in order) with their labels."""

    pixels: ArrayImages | ImageFiles
    labels: np.ndarray  # int64, one per row
    rows: np.ndarray

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray) -> "Dataset":
        return cls(ArrayImages(images), np.asarray(labels, dtype=np.int64), np.arange(len(labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions: np.ndarray) -> "Dataset":
        return replace(self, labels=self.labels[positions], rows=self.rows[positions])

    def take(self, count: int | None, seed: int = 0) -> "Dataset":
        """A reproducible random subset of ``count`` samples (all when None or larger)."""
        if count is None or count >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False)))

    def read(self) -> np.ndarray:
        """Every image of the subset at once (float32 NHWC in [0, 1]): for small subsets; large ones use
        ``batches``."""
        return self.pixels.read(self.rows)

    def batches(self, size: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.pixels.read(self.rows[start : start + size]), self.labels[start : start + size]


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    test: Dataset
    classes: tuple[str, ...]
    source: str
    task: str = "classify"  # detect: each label is an image's (k, 5) boxes (``data.detection``)
    labelled: bool = True  # false for a folder of images alone (detection: the float model's boxes are the truth)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.pixels.shape  # H, W, C

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The model input these images make: (1, C, H, W)."""
        height, width, channels = self.image_shape
        return 1, channels, height, width

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        stores = {id(split.pixels): split.pixels for split in (self.train, self.test)}  # one folder: hashed once
        for pixels in stores.values():
            pixels.digest(digest)
        for split in (self.train, self.test):
            digest.update(split.rows.tobytes())
            for labels in (split.labels if split.labels.dtype == object else [split.labels]):
                digest.update(np.ascontiguousarray(labels).tobytes())
        return digest.hexdigest()


def load_dataset(spec: str | Path | None = None, image_size: tuple[int, int] | None = None, resize: int | None = None,
                 crop: int | None = None, interpolation: str = "bilinear") -> DataSplits:
    """Load ``spec``: None for Fashion-MNIST, a directory of IDX files, an image-folder tree or an ``.npz``.

    Image files are read as the model's preprocessing says (``resize`` the shorter side, then a centred ``crop``,
    with ``interpolation``), else squashed to ``image_size`` or to the first image's size.
    """
    if spec is None:
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"{FASHION_MNIST_DIR}: Fashion-MNIST not found; install it with "
                "'sudo apt-get install -y dataset-fashion-mnist' or pass --data"
            )
        return _load_idx_dir(FASHION_MNIST_DIR, FASHION_MNIST_CLASSES)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path}: unsupported dataset file; expected an .npz, a directory of IDX files or an image folder")
        splits = _load_npz(path)
    elif any(path.glob("*-idx3-ubyte*")):
        splits = _load_idx_dir(path, None)
    else:
        splits = _load_image_tree(path, image_size, {"resize": resize, "crop": crop, "interpolation": interpolation})
    for name, split in (("train", splits.train), ("test", splits.test)):
        if len(split) == 0:
            raise DataError(f"{path}: the {name} split is empty")
    return splits


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"{path}: not a valid IDX file ({exc})") from exc


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing IDX file {stem}[.gz]")


def _load_idx_dir(directory: Path, classes: tuple[str, ...] | None) -> DataSplits:
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels")
        splits.append(Dataset.from_arrays(images[..., None], labels))  # uint8: scaled to [0, 1] when read
    n_classes = int(max(splits[0].labels.max(initial=0), splits[1].labels.max(initial=0))) + 1
    return DataSplits(splits[0], splits[1], classes or tuple(str(i) for i in range(n_classes)), str(directory))


def _split(whole: Dataset, seed: int = 0) -> tuple[Dataset, Dataset]:
    """80/20 into train and held-out, by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(whole))
    n_test = max(1, int(round(len(whole) * HELD_OUT_FRACTION))) if len(whole) > 1 else 0
    return whole.subset(order[n_test:]), whole.subset(order[:n_test])


def _as_unit_images(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    """uint8 as it is, float checked finite and clipped to [0, 1]; NHWC."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{path}: images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(images)))
        if bad:  # calibration would otherwise stop deep inside onnxruntime ("scale issue")
            raise DataError(f"{path}: '{key}' holds {bad} non-finite values (NaN or inf) in {images.size}; "
                            "images must be finite, uint8 or float in [0, 1]")
        return np.clip(images.astype(np.float32), 0.0, 1.0)
    raise DataError(f"{path}: images must be uint8 or float in [0, 1], got {images.dtype}")


def _load_npz(path: Path) -> DataSplits:
    try:
        archive = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from exc
    if "x" not in archive or "y" not in archive:
        raise DataError(f"{path}: an .npz dataset needs arrays 'x' and 'y', found {sorted(archive.files)}")
    images, labels = _as_unit_images(archive["x"], path, "x"), archive["y"].astype(np.int64).reshape(-1)
    if len(images) != len(labels):
        raise DataError(f"{path}: 'x' has {len(images)} samples but 'y' has {len(labels)}")
    if "x_test" in archive and "y_test" in archive:
        train = Dataset.from_arrays(images, labels)
        test = Dataset.from_arrays(_as_unit_images(archive["x_test"], path, "x_test"),
                                   archive["y_test"].astype(np.int64).reshape(-1))
    else:
        train, test = _split(Dataset.from_arrays(images, labels))
    n_classes = int(max(labels.max(initial=0), test.labels.max(initial=0))) + 1
    classes = tuple(str(c) for c in archive["classes"]) if "classes" in archive else tuple(map(str, range(n_classes)))
    return DataSplits(train, test, classes, str(path))


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    tree = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            tree[class_dir.name] = files
    return tree


def _load_image_tree(root: Path, size: tuple[int, int] | None, recipe: dict) -> DataSplits:
    """``root/<class>/*.png`` (split 80/20), or ``root/train/<class>`` with ``root/test`` or ``root/val``. Only the
    file list is read here; images are decoded batch by batch."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    trees = [_scan_classes(root / "train"), _scan_classes(held_out)] if (root / "train").is_dir() and held_out else [
        _scan_classes(root)
    ]
    classes = sorted(set().union(*trees))
    if not classes:
        raise DataError(f"{root}: no images found (expected one sub-folder of PNG/JPEG files per class)")
    files, labels, counts = [], [], []
    for tree in trees:
        split = [(file, label) for label, name in enumerate(classes) for file in tree.get(name, [])]
        if not split:
            raise DataError(f"{root}: a split holds no images")
        files += [file for file, _ in split]
        labels += [label for _, label in split]
        counts.append(len(split))
    from PIL import Image

    with Image.open(files[0]) as probe:
        mode = "L" if probe.mode in ("L", "1", "I", "I;16") else "RGB"
        if not (recipe["resize"] or recipe["crop"]):
            size = size or (probe.size[1], probe.size[0])
    whole = Dataset(ImageFiles(files, mode, size, recipe), np.asarray(labels, dtype=np.int64), np.arange(len(files)))
    if len(counts) == 2:
        train, test = whole.subset(np.arange(counts[0])), whole.subset(np.arange(counts[0], len(files)))
    else:
        train, test = _split(whole)
    return DataSplits(train, test, tuple(classes), str(root))
