"""Dataset readers on real (small) files of each supported format, and their errors."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline.data import PreprocessSpec, load_dataset
from pipeline.data.datasets import FASHION_MNIST_DIR
from pipeline.errors import DataError


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_default():
    splits = load_dataset(None)
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.image_shape == (28, 28, 1) and splits.classes[0] == "T-shirt/top"
    assert 0.0 <= splits.train.read().min() and splits.train.read().max() <= 1.0


def test_idx_directory(tmp_path):
    real = load_dataset(None)
    for prefix, split in (("train", real.train.take(200)), ("t10k", real.test.take(50))):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.round(split.read()[..., 0] * 255))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", split.labels)
    splits = load_dataset(tmp_path)
    assert len(splits.train) == 200 and len(splits.test) == 50 and len(splits.classes) == 10


def test_image_folder_tree_is_split_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    splits = load_dataset(tmp_path, image_size=(16, 16))
    assert splits.classes == ("cat", "dog")
    assert len(splits.train) == 16 and len(splits.test) == 4 and splits.image_shape == (16, 16, 3)


def test_npz_with_explicit_test_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (30, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3, x_test=x[:6], y_test=np.arange(6) % 3)
    splits = load_dataset(tmp_path / "d.npz")
    assert len(splits.train) == 30 and len(splits.test) == 6 and splits.image_shape == (8, 8, 1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nothing-here", "dataset not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
        (lambda p: np.savez(p / "bad.npz", images=np.zeros((3, 4, 4))) or p / "bad.npz", "needs arrays 'x' and 'y'"),
        (lambda p: (p / "t.txt").write_text("x") and p / "t.txt", "unsupported dataset file"),
        (lambda p: np.savez(p / "none.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0)) or p / "none.npz",
         "the train split is empty"),
        (lambda p: np.savez(p / "nan.npz", x=np.where(np.eye(8)[None] > 0, np.nan, 0.5).repeat(4, 0), y=np.arange(4))
         or p / "nan.npz", "'x' holds 32 non-finite values (NaN or inf) in 256"),
    ],
)
def test_bad_datasets(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_corrupt_idx_file(tmp_path):
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(b"\x01\x02garbage")
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(b"\x01\x02garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not a valid IDX file"):
        load_dataset(tmp_path)


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("pipeline.data.datasets.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset(None)
    assert FASHION_MNIST_DIR.is_dir()


def test_preprocess_spec_normalises_per_channel():
    images = np.random.default_rng(0).random((50, 4, 4, 3)).astype(np.float32)
    spec = PreprocessSpec.from_images(images)
    out = spec.apply(images)
    assert out.shape == (50, 3, 4, 4)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_labels_files_and_the_mapping_of_the_datas_classes(tmp_path):
    from pipeline.data.labels import map_classes, read_labels

    (tmp_path / "labels.txt").write_text("tench\ngoldfish\ngreat white shark\n\n")
    (tmp_path / "list.json").write_text('["tench", "goldfish", "great white shark"]')
    (tmp_path / "index.json").write_text('{"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"], '
                                         '"2": ["n01484850", "great white shark"]}')
    labels = ("tench", "goldfish", "great white shark")
    assert all(read_labels(tmp_path / name) == labels for name in ("labels.txt", "list.json", "index.json"))
    images = np.zeros((4, 2, 2, 1), np.float32)
    from pipeline.data import DataSplits, Dataset

    data = DataSplits(Dataset.from_arrays(images, np.array([0, 1, 0, 1])), Dataset.from_arrays(images[:2], np.array([1, 0])),
                      ("Great White Shark", "0"), "folder")  # by name (any case) and by index
    mapped = map_classes(data, labels, "labels.txt")
    assert mapped.classes == labels and list(mapped.train.labels) == [2, 0, 2, 0] and list(mapped.test.labels) == [0, 2]
    with pytest.raises(DataError, match="folder: data class 'carp' is none of the model's 3 labels \\(labels.txt, "
                                        "e.g. 'tench'\\) nor an index below 3; the data has 2 classes"):
        map_classes(DataSplits(data.train, data.test, ("carp", "0"), "folder"), labels, "labels.txt")
    (tmp_path / "bad.json").write_text('{"a": "tench"}')
    with pytest.raises(DataError, match="bad.json: a JSON mapping of labels needs integer keys"):
        read_labels(tmp_path / "bad.json")
