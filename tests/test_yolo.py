"""Ultralytics YOLO files as users bring them: a real YOLOv8n (NudeNet's, from its wheel) read with its own metadata
(task, class names, input size, preprocessing) and decoded on a real photo, whole and with its head split into boxes
and scores; an end-to-end head's rows decoded as the dense head's; and the YOLOv8n through the pipeline for a Raspberry
Pi 4 with nothing but the file and a folder of photos."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from board_runtime.detection import box_iou, candidates, check_options, postprocess
from board_runtime.imaging import letterbox, unletterbox
from pipeline.cli import main
from pipeline.detection.dense_head import SPLIT_DECODER, split_dense_head
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.onnxmodel import fix_and_fold
from pipeline.sources.model_card import onnx_card
from tests.test_detection import ASTRONAUT_FACE
from tests.wheels import wheel_file
from tests.yolo_layout import yolo_layout


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory):
    return wheel_file("yolov8n", tmp_path_factory.mktemp("nudenet"))


def _photo(size: tuple[int, int], name: str = "astronaut") -> np.ndarray:
    """One of scikit-image's photos letterboxed to ``size``, NCHW in [0, 1] as Ultralytics feeds it."""
    from skimage import data as skimage_data

    image = letterbox(Image.fromarray(getattr(skimage_data, name)()), size, Image.BILINEAR)
    return (np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None].copy()


def _split_at_320(source, path) -> None:
    """A YOLO file fixed at 320 x 320 and its dense head split into boxes and scores, as the pipeline's model step
    prepares it."""
    fix_and_fold(source, (1, 3, 320, 320), path, detector=True)
    split_dense_head(path, (320, 320))


def test_ultralytics_metadata_is_read_as_the_models_card(yolov8n):
    card = onnx_card(yolov8n)
    assert card.task == "detect" and card.image_hw == (320, 320) and card.preprocess.preset == "unit"
    assert len(card.classes) == 18 and card.classes[1] == "FACE_FEMALE"
    assert card.split_head and card.decoder == SPLIT_DECODER  # its dense head is split into boxes and scores


def test_a_real_yolov8n_finds_the_astronauts_face_whole_and_split(yolov8n, tmp_path):
    """NudeNet's YOLOv8n on the astronaut photo: its one output read by the ``yolo`` decoder finds her face
    (FACE_FEMALE); split into boxes (normalised) and scores it gives the same detections through ``boxes-scores``."""
    x = _photo((320, 320))
    outputs = ort.InferenceSession(str(yolov8n), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    assert outputs[0].shape == (1, 4 + 18, 2100)
    whole = postprocess(outputs, (320, 320), check_options({"decoder": "yolo"}))
    found = whole.above(0.25)
    assert found.classes[0] == 1 and found.scores[0] > 0.5
    face = unletterbox(found.boxes[:1], 512, 512, (320, 320)).astype(np.float64)
    assert box_iou(face, np.asarray([ASTRONAUT_FACE], np.float64))[0, 0] > 0.5

    _split_at_320(yolov8n, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    boxes, scores = session.run(None, {"input": x})
    assert boxes.shape == (1, 4, 2100) and scores.shape == (1, 18, 2100) and 0 <= boxes.min() and boxes.max() <= 1.1
    split = postprocess([boxes, scores], (320, 320), check_options(SPLIT_DECODER))
    assert np.array_equal(split.classes, whole.classes)
    np.testing.assert_allclose(split.boxes, whole.boxes, atol=1e-5)
    np.testing.assert_allclose(split.scores, whole.scores, atol=1e-5)


def test_the_weight_tuning_runs_a_yolov8n_graph_in_torch_as_onnx_runtime_does(yolov8n, tmp_path):
    """The graph the weight tuning trains through (its C2f blocks' Split, the neck's Resize and MaxPool, the DFL's
    Softmax, the split head's Slice), run node by node in torch, gives ONNX Runtime's boxes and scores."""
    import torch

    from calibration.tuning import GraphModule

    _split_at_320(yolov8n, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert {"Split", "Resize", "MaxPool", "Softmax", "Slice"} <= {n.op_type for n in model.graph.node}
    x = np.concatenate([_photo((320, 320)), _photo((320, 320), "chelsea")])
    boxes, scores = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"input": x[:1]})
    with torch.no_grad():
        in_torch = GraphModule(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(in_torch[:1], np.concatenate([boxes.reshape(1, -1), scores.reshape(1, -1)], 1),
                               atol=1e-4)
    assert not np.allclose(in_torch[0], in_torch[1])  # each photo its own outputs: the batch is not the file's 1


def test_a_recent_ultralytics_yolo11n_finds_the_person_the_cat_and_the_cup(tmp_path):
    """Ultralytics' COCO YOLO11n as its 8.3.250 exporter wrote it (dynamic input size): its card names the 80 classes
    and 640 x 640; fixed at 320 x 320 and split, it finds in scikit-image's photos what they show."""
    yolo11n = wheel_file("yolo11n", tmp_path)
    card = onnx_card(yolo11n)
    assert card.task == "detect" and card.image_hw == (640, 640) and len(card.classes) == 80 and card.split_head
    _split_at_320(yolo11n, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for photo, shown in (("astronaut", "person"), ("chelsea", "cat"), ("coffee", "cup")):
        outputs = session.run(None, {"input": _photo((320, 320), photo)})
        found = postprocess(outputs, (320, 320), check_options(SPLIT_DECODER)).above(0.5)
        assert card.classes[found.classes[0]] == shown, (photo, [card.classes[c] for c in found.classes])


def test_an_end_to_end_heads_rows_decode_as_the_dense_heads_boxes_and_scores(tmp_path):
    """The Ultralytics-layout detector and the same weights with an end-to-end head ([1, 50, 6] rows, its card read
    from Ultralytics' metadata): every row is one of the dense head's candidates, with its box and its class's score."""
    size = (160, 160)
    export_onnx(yolo_layout(3), (1, 3, *size), tmp_path / "dense.onnx", 17, ["output0"])
    export_onnx(yolo_layout(3, end2end=50), (1, 3, *size), tmp_path / "end2end.onnx", 17, ["output0"])
    model = onnx.load(str(tmp_path / "end2end.onnx"))
    onnx.helper.set_model_props(model, {"author": "Ultralytics", "task": "detect", "end2end": "True",
                                        "names": "{0: 'a', 1: 'b', 2: 'c'}", "imgsz": "[160, 160]"})
    onnx.save(model, str(tmp_path / "end2end.onnx"))
    card = onnx_card(tmp_path / "end2end.onnx")
    assert card.decoder == {"decoder": "yolo-end2end", "num_classes": 3} and card.classes == ("a", "b", "c")
    x = _photo(size)
    run = lambda name: ort.InferenceSession(str(tmp_path / name)).run(None, {"input": x})  # noqa: E731
    rows = run("end2end.onnx")
    assert rows[0].shape == (1, 50, 6)
    boxes, scores = candidates(rows, size, check_options(card.decoder))
    dense_boxes, dense_scores = candidates(run("dense.onnx"), size, check_options({"decoder": "yolo"}))
    for box, row in zip(boxes, scores):
        cls = int(np.argmax(row))
        match = np.abs(dense_boxes - box).max(axis=1).argmin()
        assert np.abs(dense_boxes[match] - box).max() < 1e-4 and dense_scores[match, cls] == pytest.approx(row[cls])
    top = int(rows[0][0, :, 5].max())
    with pytest.raises(ValueError, match=f"class index {top} for a model of {top} classes"):
        candidates(rows, size, check_options({**card.decoder, "num_classes": top}))


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory):
    """Twenty crops of the astronaut photo around her face, from tight to nearly whole: what NudeNet's model finds."""
    from skimage import data as skimage_data

    photo, folder = Image.fromarray(skimage_data.astronaut()), tmp_path_factory.mktemp("faces")
    left, top, right, bottom = ASTRONAUT_FACE
    for i in range(20):
        margin, shift = 30 + 12 * i, (i % 3 - 1) * 15
        photo.crop((max(0, left - margin + shift), max(0, top - margin), min(512, right + margin + shift),
                    min(512, bottom + margin))).save(folder / f"astronaut-{i}.png")
    return folder


@pytest.mark.slow
def test_a_yolov8n_file_and_a_folder_of_photos_are_all_a_run_needs(yolov8n, face_photos, tmp_path, capsys):
    """No configuration: the task, decoder, class names, input size and preprocessing come from the file's
    Ultralytics metadata, its head split into boxes and scores; every float TFLite file was checked against the ONNX
    model when it was made; every artifact finds the float model's boxes; no budget is held against it that its user
    did not set."""
    out = tmp_path / "run"
    code = main(["run", "--model", str(yolov8n), "--data", str(face_photos), "--target", "raspberry-pi-4",
                 "--out", str(out), "--calibration-samples", "8", "--calibration-method", "minmax", "--weight-rounding",
                 "nearest", "--bench-runs", "10", "--bench-repeats", "1"])
    assert code == 0, capsys.readouterr().err
    model = json.loads((out / ".state" / "model.json").read_text())["data"]
    assert model["task"] == "detect" and model["decoder"] == check_options(SPLIT_DECODER)
    assert model["output_names"] == ["boxes", "scores"] and model["input_shape"] == [1, 3, 320, 320]
    assert model["classes"][1] == "FACE_FEMALE" and model["preprocess"]["letterbox"] == [320, 320]
    conversion = json.loads(next((out / ".state").glob("convert-*.json")).read_text())["data"]
    parity = conversion["float_parity"]
    assert parity["failure"] is None and [p["output"] for p in parity["fp32"]] == ["boxes", "scores"]
    assert max(p["error"] for p in parity["fp32"]) < 1e-3 and max(p["error"] for p in parity["fp16"]) < 0.1
    report = json.loads((out / "raspberry-pi-4" / "report.json").read_text())
    # the Pi 4 profile's 40 MFLOPs, 150k parameters and 2 MiB are sized for the built-in networks, not for this one
    assert report["budget_text"].startswith("none set for this model") and report["recommendation"] is not None
    rows = {r["kind"]: r for r in report["rows"]}
    assert rows["tflite-fp32"]["reference_map50"] >= 99.9 and rows["tflite-fp16"]["reference_map50"] >= 99
    assert rows["tflite-int8"]["reference_map50"] >= 90 and rows["onnx-int8"]["reference_map50"] >= 90
