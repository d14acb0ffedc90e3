"""Every float TFLite conversion is checked against its ONNX model before anything is made from it: a detector laid
out as Ultralytics exports YOLOv8 (built here, at 640 x 640 with 80 classes, where a level's tensors have 80 channels,
rows and columns) converts to files that reproduce it; a file that does not reproduce its ONNX model stops the
conversion, naming the output, the channel and the op where they part. (A real YOLOv8n's conversion is checked in
``test_yolo``, through the pipeline.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.formats.float_parity import channel_errors, check_float_files, in_reference_layout
from pipeline.formats.onnx2tf_job import INT8_MODEL, PARITY_REPORT, TFLiteJob
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.formats.tflite import convert_tflite, write_onnx2tf_sample
from pipeline.profile import IODtype, Layout
from tests.yolo_layout import yolo_layout


def _photos(size: tuple[int, int]) -> np.ndarray:
    """scikit-image's photos resized to ``size`` (height, width): NHWC in [0, 1], as Ultralytics feeds its models."""
    from skimage import data as skimage_data

    photos = [getattr(skimage_data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    return np.stack([np.asarray(Image.fromarray(p).resize(size[::-1]), np.float32) / 255 for p in photos])


def _convert(onnx_path, images, out):
    return convert_tflite(onnx_path, images.transpose(0, 3, 1, 2).copy(), images, out, "per-channel",
                          IODtype.FLOAT32, Layout.NHWC, int8=False)


def test_channel_errors_judge_each_channel_on_its_own_scale():
    boxes_and_scores = np.zeros((2, 5, 7))
    boxes_and_scores[:, :4] = 600.0  # pixels
    boxes_and_scores[:, 4] = 0.9  # a class score
    wrong_score = boxes_and_scores.copy()
    wrong_score[:, 4] = 0.1
    errors = channel_errors(boxes_and_scores, wrong_score)
    assert errors[:4].tolist() == [0, 0, 0, 0] and errors[4] == pytest.approx(0.8 / 0.9)
    # one figure over the whole output would call this 0.8 / 600
    nhwc = np.arange(24.0).reshape(1, 2, 3, 4)
    assert np.array_equal(in_reference_layout(nhwc, (1, 4, 2, 3)), nhwc.transpose(0, 3, 1, 2))
    assert in_reference_layout(nhwc, (1, 5, 2, 3)) is None


@pytest.fixture(scope="module")
def ultralytics_layout(tmp_path_factory):
    """The Ultralytics-layout detector at 640 x 640, 80 classes, as ONNX and as the float TFLite files made from it."""
    folder = tmp_path_factory.mktemp("yolo-layout")
    export_onnx(yolo_layout(80), (1, 3, 640, 640), folder / "model.onnx", 17, ["output0"])
    images = _photos((640, 640))
    return folder, images, _convert(folder / "model.onnx", images, folder / "tflite")


@pytest.mark.slow
def test_the_ultralytics_layout_at_640_converts_to_files_that_reproduce_it(ultralytics_layout):
    folder, images, files = ultralytics_layout
    report = check_float_files(folder / "model.onnx", {"fp32": files["fp32"]}, images.transpose(0, 3, 1, 2), True)
    assert report["failure"] is None and report["fp32"][0]["error"] < 1e-3


SMALL = (160, 160)


@pytest.mark.slow
def test_the_conversion_job_names_where_float_files_miss_and_makes_no_int8_model(tmp_path):
    """The conversion job (the child process ``convert_tflite`` starts) compares onnx2tf's float files with the ONNX
    model as given before it quantizes. Given as that model the same detector with its last level's class-score
    convolution moved (its bias +3), it names a class-score row of the output and that convolution, and writes no
    int8 model."""
    export_onnx(yolo_layout(3), (1, 3, *SMALL), tmp_path / "model.onnx", 17, ["output0"])
    moved = yolo_layout(3)
    with torch.no_grad():
        moved.cls[2][2].bias += 3.0
    export_onnx(moved, (1, 3, *SMALL), tmp_path / "moved.onnx", 17, ["output0"])
    images = _photos(SMALL)
    np.save(tmp_path / "calibration.npy", images)
    write_onnx2tf_sample(images, tmp_path)
    job = TFLiteJob(onnx_path=str(tmp_path / "model.onnx"), output_dir=str(tmp_path / "tf"),
                    calibration_npy=str(tmp_path / "calibration.npy"), channels=3, quant_type="per-channel",
                    io_dtype="float32", keep_nchw=False, reference_onnx=str(tmp_path / "moved.onnx"))
    (tmp_path / "job.json").write_text(json.dumps(asdict(job)))
    subprocess.run([sys.executable, "-m", "pipeline.formats.onnx2tf_job", str(tmp_path / "job.json")], cwd=tmp_path,
                   env={**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])},
                   check=True, capture_output=True)
    report = json.loads((tmp_path / "tf" / PARITY_REPORT).read_text())
    assert report["failure"].startswith("tflite-fp32 does not reproduce the ONNX model: output 'output0' channel ")
    assert 4 <= report["fp32"][0]["channel"] < 7  # a class score, not a box coordinate
    assert report["failure"].endswith("first diverging op: Conv '/cls.2/cls.2.2/Conv'")
    assert (tmp_path / "tf" / "model_float32.tflite").is_file() and not (tmp_path / "tf" / INT8_MODEL).exists()
