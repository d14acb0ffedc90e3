"""Shared fixtures: a small real run (fmnist-tiny on a Fashion-MNIST subset) built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline import build_config
from pipeline.orchestrator import Run
from tests import arm64_board, sshd

sshd_server = sshd.sshd_server  # a real OpenSSH server on 127.0.0.1 (tests/sshd.py)
arm64_board = arm64_board.arm64_board  # an emulated aarch64 board with its own sshd (tests/arm64_board.py)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
    model="fmnist-tiny",
    train={"epochs": 4, "train_subset": 10000},
    calibration={"num_samples": 128},
    eval_samples=400,
    bench={"runs": 30, "warmup": 3, "max_seconds": 5.0, "repeats": 2},
    compress={"enabled": False},
)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["PIPELINE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def small_config():
    def make(out: Path, **changes):
        options = {**SMALL, **changes}
        return build_config(out=str(out), **options)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_config):
    """One full run for a Raspberry Pi 4 and a Coral Edge TPU; returns (Run, log lines)."""
    out = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    run = Run(small_config(out, targets="raspberry-pi-4,coral-edgetpu"), log=lines.append)
    run.execute()
    return run, lines


PHOTOS = {"person": "astronaut", "cup": "coffee", "rocket": "rocket"}  # class -> skimage photo (rgb_net: 3 classes)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """Real photos (scikit-image's), six crops of each at several sizes and aspect ratios, one folder per class."""
    from skimage import data as skimage_data  # a test dependency; these photos ship in its wheel

    root = tmp_path_factory.mktemp("photos")
    for label, name in PHOTOS.items():
        photo = getattr(skimage_data, name)()
        (root / label).mkdir()
        height, width = photo.shape[:2]
        for i in range(6):
            top, left = (i * height) // 12, (i * width) // 14
            crop = photo[top : top + height // 2 + 10 * i, left : left + width // 2 + 6 * i]
            Image.fromarray(crop).save(root / label / f"{name}-{i}.png")
    return root


IMAGENET_INDEX = {"person": "0", "cup": "968", "rocket": "812"}  # the photo classes, as ImageNet indices


@pytest.fixture
def imagenet_photos(photo_folder, tmp_path) -> tuple[Path, Path]:
    """The photos in folders named by ImageNet index, and a 1000-line labels file."""
    import shutil

    data = tmp_path / "photos"
    for label, index in IMAGENET_INDEX.items():
        shutil.copytree(photo_folder / label, data / index)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    return data, labels


# Tests that use these fixtures carry the tier's marker without saying so (pyproject.toml registers them).
FIXTURE_MARKERS = {"sshd_server": "ssh", "arm64_board": "emulated"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
