"""Dataset readers: Fashion-MNIST IDX files, image-folder trees and ``.npz`` archives.

Every reader returns images as float32 NHWC in [0, 1] and int64 labels, split into train and test.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from board_runtime.imaging import IMAGE_SUFFIXES, load_image

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # float32 NHWC in [0, 1]
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int | None, seed: int = 0) -> "Dataset":
        """A reproducible random subset of ``count`` samples (all when None or larger)."""
        if count is None or count >= len(self):
            return self
        index = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        return Dataset(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    test: Dataset
    classes: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # H, W, C

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split in (self.train, self.test):
            digest.update(np.ascontiguousarray(split.images).tobytes())
            digest.update(split.labels.tobytes())
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
        splits.append(Dataset(images[..., None].astype(np.float32) / 255.0, labels))
    n_classes = int(max(splits[0].labels.max(initial=0), splits[1].labels.max(initial=0))) + 1
    return DataSplits(splits[0], splits[1], classes or tuple(str(i) for i in range(n_classes)), str(directory))


def _split(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = max(1, int(round(len(labels) * HELD_OUT_FRACTION))) if len(labels) > 1 else 0
    test, train = order[:n_test], order[n_test:]
    return Dataset(images[train], labels[train]), Dataset(images[test], labels[test])


def _as_unit_float(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{path}: images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
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
    images, labels = _as_unit_float(archive["x"], path, "x"), archive["y"].astype(np.int64).reshape(-1)
    if len(images) != len(labels):
        raise DataError(f"{path}: 'x' has {len(images)} samples but 'y' has {len(labels)}")
    if "x_test" in archive and "y_test" in archive:
        train = Dataset(images, labels)
        test = Dataset(_as_unit_float(archive["x_test"], path, "x_test"), archive["y_test"].astype(np.int64).reshape(-1))
    else:
        train, test = _split(images, labels)
    n_classes = int(max(labels.max(initial=0), test.labels.max(initial=0))) + 1
    classes = tuple(str(c) for c in archive["classes"]) if "classes" in archive else tuple(map(str, range(n_classes)))
    return DataSplits(train, test, classes, str(path))


def _read_image(path: Path, mode: str, size: tuple[int, int] | None, recipe: dict) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        return load_image(path, mode, size=size, **recipe)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    tree = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            tree[class_dir.name] = files
    return tree


def _load_image_tree(root: Path, size: tuple[int, int] | None, recipe: dict) -> DataSplits:
    """``root/<class>/*.png`` (split 80/20), or ``root/train/<class>`` with ``root/test`` or ``root/val``."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    trees = [_scan_classes(root / "train"), _scan_classes(held_out)] if (root / "train").is_dir() and held_out else [
        _scan_classes(root)
    ]
    classes = sorted(set().union(*trees))
    if not classes:
        raise DataError(f"{root}: no images found (expected one sub-folder of PNG/JPEG files per class)")
    first = next(iter(trees[0].values()))[0]
    from PIL import Image

    with Image.open(first) as probe:
        mode = "L" if probe.mode in ("L", "1", "I", "I;16") else "RGB"
        if not (recipe["resize"] or recipe["crop"]):
            size = size or (probe.size[1], probe.size[0])
    arrays = []
    for tree in trees:
        images, labels = [], []
        for label, name in enumerate(classes):
            for file in tree.get(name, []):
                images.append(_read_image(file, mode, size, recipe))
                labels.append(label)
        if not images:
            raise DataError(f"{root}: a split holds no images")
        shapes = sorted({image.shape for image in images})
        if len(shapes) > 1:
            raise DataError(f"{root}: images of {len(shapes)} shapes after resizing ({shapes[0]}, {shapes[-1]}, ...); "
                            "give a centre crop (--crop) so that they share one")
        arrays.append((np.stack(images), np.asarray(labels, dtype=np.int64)))
    if len(arrays) == 2:
        train, test = Dataset(*arrays[0]), Dataset(*arrays[1])
    else:
        train, test = _split(*arrays[0])
    return DataSplits(train, test, tuple(classes), str(root))
