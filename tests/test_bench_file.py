"""Model files a user already has, benchmarked as they are (``pipeline bench --model FILE``): a real TFLite file from
MediaPipe's wheel (BlazeFace, fp16 weights, NHWC, a detector's [1, 896, 16] output), the onnx wheel's SqueezeNet
with dynamic dims, and a TFLite classifier made from that SqueezeNet, evaluated on real photos."""
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.targets import TARGETS_DIR
from tests.test_onnx_source import SQUEEZENET, dynamic_squeezenet
from tests.wheels import wheel_file

@pytest.fixture(scope="module")
def blazeface(tmp_path_factory) -> Path:
    """MediaPipe's short-range face detector, unzipped from its wheel (fetched by the set-up step)."""
    return wheel_file("blazeface", tmp_path_factory.mktemp("mediapipe"))


def _report(out: Path, target: str) -> dict:
    return json.loads((out / target / "report.json").read_text())


def test_a_tflite_file_is_benchmarked_alone(blazeface, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bench", "--model", str(blazeface), "--target", "host", "--out", str(out), "--bench-runs", "20",
                 "--bench-repeats", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"host: {out / 'host' / 'report.md'}")
    report = _report(out, "host")
    [row] = report["rows"]
    assert row["kind"] == "tflite-fp16" and row["top1"] is None and row["latency_ms"]["p50"] > 0
    assert report["model"]["input_shape"] == [1, 3, 128, 128] and 50_000 < report["model"]["params"] < 200_000
    assert not report["accuracy_gate"]["evaluated"] and report["export_parity"] is None
    markdown = (out / "host" / "report.md").read_text()
    assert "**Evaluation:** none: no data given (--data)" in markdown and "| tflite-fp16 | litert" in markdown
    manifest = json.loads((out / "host" / "bundle" / "manifest.json").read_text())
    [artifact] = manifest["artifacts"]
    assert artifact["input_shape"] == [1, 128, 128, 3] and artifact["input_layout"] == "NHWC"
    assert (out / "host" / "bundle" / artifact["path"]).read_bytes() == blazeface.read_bytes()  # the file as it is
    assert not (out / "shared" / "export-opset17").exists()  # nothing else was made


def test_an_onnx_file_with_dynamic_dims_needs_a_shape_without_data(tmp_path, capsys):
    dynamic = dynamic_squeezenet(tmp_path)
    args = ["bench", "--model", str(dynamic), "--target", "jetson-nano", "--out", str(tmp_path / "run"),
            "--bench-runs", "5", "--bench-repeats", "1"]
    assert main(args) == 4
    assert capsys.readouterr().err.strip() == (f"error: {dynamic}: input ['?', 3, '?', '?'] has dynamic dims; give "
                                               "--input-shape N,C,H,W (e.g. 1,3,224,224) or --data")
    assert main([*args, "--input-shape", "1,3,160,160"]) == 0
    report = _report(tmp_path / "run", "jetson-nano")
    assert [r["kind"] for r in report["rows"]] == ["onnx-fp32"] and report["model"]["input_shape"] == [1, 3, 160, 160]
    assert report["export_parity"] <= 1e-5  # opset 9 -> 13 on seeded noise: no data to take inputs from


@pytest.mark.slow
def test_a_tflite_classifier_is_evaluated_on_data_as_the_run_that_made_it(imagenet_photos, tmp_path):
    """SqueezeNet through a TFLite target; its int8 .tflite given back to `bench` with the same photos must score
    exactly what that run's report says, with no other artifact made."""
    data, labels = imagenet_photos
    profile = tmp_path / "tflite-board.yaml"
    profile.write_text((TARGETS_DIR / "raspberry-pi-4.yaml").read_text().replace("name: raspberry-pi-4",
                                                                                "name: tflite-board")
                       .replace("accuracy_tolerance: 1.0", "accuracy_tolerance: 100"))
    common = ["--data", str(data), "--labels", str(labels), "--preprocess", "imagenet", "--resize", "256", "--crop",
              "224", "--bench-runs", "5", "--bench-repeats", "1"]
    made = tmp_path / "made"
    assert main(["run", "--model", str(SQUEEZENET), "--target", str(profile), "--out", str(made),
                 "--calibration-samples", "8", "--calibration-method", "minmax", *common]) == 0
    rows = {r["kind"]: r for r in _report(made, "tflite-board")["rows"]}
    assert {"tflite-fp32", "tflite-fp16", "tflite-int8"} <= set(rows)  # TFLite from an ONNX source
    assert rows["tflite-fp32"]["agreement"] == 100.0
    int8 = made / "tflite-board" / "bundle" / "artifacts" / "tflite-int8.tflite"
    assert main(["bench", "--model", str(int8), "--target", str(profile), "--out", str(tmp_path / "alone"),
                 *common]) == 0
    [row] = _report(tmp_path / "alone", "tflite-board")["rows"]
    assert row["kind"] == "tflite-int8" and row["samples"] == rows["tflite-int8"]["samples"]
    assert row["top1"] == rows["tflite-int8"]["top1"]


def test_a_detector_file_benchmarked_without_data_has_a_detectors_columns(blazeface, tmp_path):
    """Not evaluated (no data), a detector's report still has a detector's columns, all empty: mAP, not top-1."""
    config = tmp_path / "blazeface.yaml"
    config.write_text("task: detect\ndetect: {decoder: ssd, anchors: [{stride: 8, per_cell: 2}, "
                      "{stride: 16, per_cell: 6}], scale: [128, 128]}\n")
    out = tmp_path / "run"
    assert main(["bench", "--config", str(config), "--model", str(blazeface), "--target", "host", "--out", str(out),
                 "--bench-runs", "10", "--bench-repeats", "1"]) == 0
    report = _report(out, "host")
    [row] = report["rows"]
    assert report["task"] == "detect" and "top1" not in row and row["map50_95"] is None and row["recall"] is None
    assert "| mAP50-95 (%) | mAP50 (%) |" in (out / "host" / "report.md").read_text().replace("| size (KiB) ", "")
