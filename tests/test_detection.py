"""Detectors: the board runtime's decoders and NMS on real pretrained detectors (MTCNN's P-Net with facenet-pytorch's
weights, MediaPipe's BlazeFace), COCO mAP against pycocotools, the detection data readers, and detectors through the
pipeline: P-Net on real photos, and the built-in detector for a Raspberry Pi 4 and a Coral Edge TPU."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from board_runtime.detection import Detections, box_iou, check_options, nms, postprocess
from board_runtime.imaging import letterbox, letterbox_boxes, unletterbox
from pipeline.cli import main
from pipeline.data.detection import load_detection
from pipeline.detection.metrics import coco_map
from tests import sshd
from tests.helpers import pnet
from tests.test_bench_file import blazeface  # noqa: F401  (a fixture: MediaPipe's face detector from its wheel)
from tests.wheels import wheel_file

sshd_server = sshd.sshd_server  # a real OpenSSH server on 127.0.0.1 (tests/sshd.py): this machine as a board

ASTRONAUT_FACE = (176, 60, 256, 165)  # pixels of skimage's astronaut photo (512 x 512)
PNET_SIZE = (72, 72)  # the face is about 12 pixels (P-Net's window) once the photo is letterboxed to this
PNET_DECODER = {"decoder": "grid", "outputs": [1, 0], "display_threshold": 0.8}
PNET_NORMALISATION = {"mean": [0.5] * 3, "std": [128 / 255] * 3}  # facenet's (x - 127.5) / 128 on pixels in [0, 1]


@pytest.fixture(scope="module")
def pnet_weights(tmp_path_factory) -> Path:
    """facenet-pytorch's P-Net weights, unzipped from its wheel (fetched by the set-up step)."""
    return wheel_file("pnet", tmp_path_factory.mktemp("facenet"))


def _astronaut() -> Image.Image:
    from skimage import data as skimage_data

    return Image.fromarray(skimage_data.astronaut())


def _face_iou(boxes_px: np.ndarray) -> np.ndarray:
    return box_iou(boxes_px.astype(np.float64), np.asarray([ASTRONAUT_FACE], np.float64))[:, 0]


def test_nms_suppresses_within_a_class_only():
    boxes = np.asarray([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]],
                       np.float32)
    scores = np.asarray([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.asarray([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.5, 100).tolist() == [0, 2, 3]  # box 1 overlaps box 0 of its own class
    assert nms(boxes, scores, classes, 0.5, 2).tolist() == [0, 2]
    assert nms(boxes, scores, classes, 0.99, 100).tolist() == [0, 1, 2, 3]


def test_decoder_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"decoder: bad value 'yolov8' \(did you mean 'yolo'\?\), expected one of "
                                         "boxes-scores, yolo, yolo-end2end, ssd, grid"):
        check_options({"decoder": "yolov8"})
    with pytest.raises(ValueError, match="decoder 'ssd': unknown option 'anchor'"):
        check_options({"decoder": "ssd", "anchor": []})


def test_pnet_grid_decoding_finds_the_astronauts_face(pnet_weights):
    """MTCNN's P-Net (published weights) on a real photo, decoded by the grid row: the best box is the face."""
    model = pnet()
    model.load_state_dict(torch.load(pnet_weights, weights_only=True))
    image = np.asarray(letterbox(_astronaut(), PNET_SIZE, Image.BILINEAR), np.float32) / 255
    x = (image - 0.5) / (128 / 255)
    with torch.no_grad():
        outputs = [o.numpy() for o in model.eval()(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))]
    found = postprocess(outputs, PNET_SIZE, check_options(PNET_DECODER)).above(0.8)
    assert len(found) >= 1 and found.scores[0] > 0.99
    assert _face_iou(unletterbox(found.boxes[:1], 512, 512, PNET_SIZE))[0] > 0.6


def test_the_int8_fallback_judges_a_detector_by_map50_against_its_float_boxes(pnet_weights, tmp_path):
    """P-Net all in int8 loses some of its float boxes on crops of a photo it was not calibrated on; with no
    tolerance the fallback, judged by mAP50 against the float model's boxes (not by output 0's top-1), keeps
    tensors in float until it reaches 100 or MAX_KEPT, and says so."""
    from calibration import CalibrationOptions, calibrate
    from calibration.fallback import MAX_KEPT, ONNX_RUNTIME, by_output_impact, keep_in_float
    from calibration.sensitivity import activation_errors, fallback_candidates
    from pipeline.detection.metrics import reference_map50_judge
    from pipeline.formats.onnx_int8 import quantize_int8
    from pipeline.targets import load_target

    model = pnet()
    model.load_state_dict(torch.load(pnet_weights, weights_only=True))
    photo, crops = np.asarray(_astronaut()), []
    for i in range(24):  # the face at several places and scales
        top, left, size = (i * 7) % 90, (i * 11) % 120, 300 + 8 * i
        crop = Image.fromarray(photo[top:top + size, left:left + size]).resize(PNET_SIZE, Image.BILINEAR)
        crops.append((np.asarray(crop, np.float32).transpose(2, 0, 1) / 255 - 0.5) / (128 / 255))
    crops = np.stack(crops)
    float_path, int8_path = tmp_path / "pnet.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(model.eval(), torch.from_numpy(crops[:1]), str(float_path), input_names=["input"],
                      output_names=["boxes", "faces"], dynamo=False)
    ranges = calibrate(float_path, "input", crops[:8], CalibrationOptions(method="minmax"))
    scheme = load_target("raspberry-pi-4").int8
    quantize = lambda exclude, path: quantize_int8(float_path, ranges, path, scheme, exclude)  # noqa: E731
    quantize([], int8_path)
    judge = reference_map50_judge(PNET_DECODER, PNET_SIZE)
    reference = ONNX_RUNTIME.outputs(float_path, crops[8:])
    assert [o.shape[0] for o in reference] == [16, 16] and judge.points(reference, reference) == 100
    errors = activation_errors(float_path, int8_path, "input", crops[:4])
    harmful = by_output_impact(quantize, float_path, tmp_path / "trial.onnx", crops[8:],
                               fallback_candidates(float_path, errors), trials=16)
    fallback = keep_in_float(quantize, float_path, int8_path, crops[8:], harmful, 0.0, judge=judge)
    assert fallback.agreement_int8 < 100 and fallback.judged_by == judge.what
    left = fallback.agreement if fallback.reached else fallback.agreement_int8  # else back to all int8
    assert left == judge.points(ONNX_RUNTIME.outputs(int8_path, crops[8:]), reference)
    assert 1 <= len(fallback.kept) <= MAX_KEPT and fallback.reached == (fallback.agreement == 100)
    assert f"mAP50 against the float model's boxes on 16 calibration samples {fallback.agreement_int8:.2f}%" \
        in fallback.note(0.0)


def test_blazeface_ssd_decoding_finds_the_astronauts_face(blazeface):
    """MediaPipe's BlazeFace (.tflite from its wheel): anchors from its spec (strides 8, 16, 16, 16: 2 and 6 anchors
    per cell), regressions in input pixels; its best face is the astronaut's."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(blazeface))
    interpreter.allocate_tensors()
    image = np.asarray(letterbox(_astronaut(), (128, 128), Image.BILINEAR), np.float32) / 127.5 - 1.0
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
    interpreter.invoke()
    by_size = {d["shape"][-1]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    options = check_options({"decoder": "ssd", "anchors": [{"stride": 8, "per_cell": 2}, {"stride": 16, "per_cell": 6}],
                             "scale": [128, 128]})
    found = postprocess([by_size[16], by_size[1]], (128, 128), options).above(0.5)
    assert len(found) >= 1 and found.scores[0] > 0.7
    assert _face_iou(unletterbox(found.boxes[:1], 512, 512, (128, 128)))[0] > 0.5


def _noisy_detections(truth: list[Detections], seed: int) -> list[Detections]:
    """Each true box moved a little and scored at random, some missed, some false boxes added."""
    rng = np.random.default_rng(seed)
    found = []
    for t in truth:
        kept = rng.random(len(t)) > 0.15
        boxes = np.clip(t.boxes[kept] + rng.normal(0, 0.02, (int(kept.sum()), 4)), 0, 1)
        false = rng.random((2, 2)) * 0.5
        false = np.concatenate([false, false + 0.1 + rng.random((2, 2)) * 0.3], axis=1)
        found.append(Detections(np.concatenate([boxes, false]).astype(np.float32),
                                rng.random(len(boxes) + 2).astype(np.float32),
                                np.concatenate([t.classes[kept], rng.integers(0, 3, 2)]).astype(np.int64)))
    return found


def test_coco_map_equals_pycocotools():
    """The evaluator's mAP50-95 and mAP50 on a labelled set equal the reference implementation's."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    truth = []
    for _ in range(40):
        corners = rng.random((3, 2)) * 0.6
        truth.append(Detections(np.concatenate([corners, corners + 0.1 + rng.random((3, 2)) * 0.3], 1).astype(
            np.float32), np.ones(3, np.float32), rng.integers(0, 3, 3)))
    found = _noisy_detections(truth, 1)
    ours = coco_map(truth, found, 3, (96, 128))

    ground = COCO()
    images = [{"id": i + 1, "width": 128, "height": 96} for i in range(len(truth))]
    annotations, results = [], []
    scale = np.asarray([128, 96, 128, 96])
    for image, (gt, dt) in enumerate(zip(truth, found), start=1):
        for box, cls in zip(gt.boxes * scale, gt.classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(cls) + 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
        for box, score, cls in zip(dt.boxes * scale, dt.scores, dt.classes):
            results.append({"image_id": image, "category_id": int(cls) + 1, "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    ground.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(3)]}
    ground.createIndex()
    evaluator = COCOeval(ground, ground.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert 20 < ours.map50_95 < 90
    assert ours.map50_95 == pytest.approx(100 * evaluator.stats[0], abs=1e-6)
    assert ours.map50 == pytest.approx(100 * evaluator.stats[1], abs=1e-6)
    assert coco_map(truth, truth, 3, (96, 128)).map50_95 == pytest.approx(100.0)


def _labelled_photos(root: Path) -> list[tuple[str, int, int, list]]:
    """Three real photos of different sizes with boxes (class, x1, y1, x2, y2 in pixels)."""
    from skimage import data as skimage_data

    images = []
    for name, boxes in (("astronaut", [(0, *ASTRONAUT_FACE), (1, 380, 0, 470, 240)]),
                        ("coffee", [(2, 140, 20, 470, 280)]), ("chelsea", [])):
        photo = Image.fromarray(getattr(skimage_data, name)())
        photo.save(root / f"{name}.png")
        images.append((f"{name}.png", photo.width, photo.height, boxes))
    return images


def test_coco_and_yolo_readers_give_the_same_letterboxed_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    images = _labelled_photos(tmp_path / "images")
    coco = {"images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h, _) in enumerate(images)],
            "annotations": [{"id": 10 * i + j, "image_id": i + 1, "category_id": c + 5, "iscrowd": 0,
                             "bbox": [x1, y1, x2 - x1, y2 - y1]}
                            for i, (_, _, _, boxes) in enumerate(images) for j, (c, x1, y1, x2, y2) in enumerate(boxes)],
            "categories": [{"id": 5, "name": "face"}, {"id": 6, "name": "rocket"}, {"id": 7, "name": "cup"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "labels").mkdir()
    for file, width, height, boxes in images:
        (tmp_path / "labels" / file.replace(".png", ".txt")).write_text("".join(
            f"{c} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}\n"
            for c, x1, y1, x2, y2 in boxes))
    (tmp_path / "classes.txt").write_text("face\nrocket\ncup\n")
    size = (96, 128)
    from_coco, from_yolo = load_detection(tmp_path / "coco.json", size), load_detection(tmp_path, size)
    assert from_coco.classes == from_yolo.classes == ("face", "rocket", "cup") and from_coco.task == "detect"
    for splits in (from_coco, from_yolo):
        whole = {Path(splits.train.pixels.files[r]).name: l for split in (splits.train, splits.test)
                 for r, l in zip(split.rows, split.labels)}
        for file, width, height, boxes in images:
            expected = np.asarray(boxes, np.float32).reshape(-1, 5)
            assert whole[file][:, 0].tolist() == expected[:, 0].tolist()
            np.testing.assert_allclose(whole[file][:, 1:], letterbox_boxes(expected[:, 1:], width, height, size),
                                       atol=1e-5)
        # the boxes map back onto the photo's own pixels
        np.testing.assert_allclose(unletterbox(whole["astronaut.png"][:1, 1:], 512, 512, size)[0], ASTRONAUT_FACE,
                                   atol=0.5)
    assert from_coco.train.read().shape[1:] == (96, 128, 3)


def test_an_unlabelled_folder_is_detection_data_without_truth(photo_folder):
    data = load_detection(photo_folder, (64, 64))
    assert not data.labelled and data.task == "detect" and len(data.train) + len(data.test) == 18
    assert all(len(labels) == 0 for labels in data.test.labels)


def _rows(out: Path, target: str) -> dict:
    return {r["kind"]: r for r in json.loads((out / target / "report.json").read_text())["rows"]}


def test_pnet_through_the_pipeline_on_real_photos(pnet_weights, photo_folder, sshd_server, tmp_path, capsys):
    """A user's detector (P-Net, published weights) on a folder of photos without labels: every float artifact
    reproduces its boxes, int8 keeps most of them, and the bundle draws them on a photo. Benchmarked on a board over
    SSH, the bundle decodes each artifact's outputs there, and its detections are scored here against the host's."""
    config = tmp_path / "pnet.yaml"
    config.write_text(json.dumps({"task": "detect", "detect": PNET_DECODER, "image_size": list(PNET_SIZE),
                                  "preprocess": PNET_NORMALISATION}))
    out = tmp_path / "run"
    code = main(["run", "--config", str(config), "--model", "tests.helpers:pnet", "--weights", str(pnet_weights),
                 "--data", str(photo_folder), "--target", "host", "--out", str(out), "--no-compress",
                 "--calibration-samples", "16", "--bench-runs", "10", "--bench-repeats", "1"])
    assert code == 0, capsys.readouterr().err
    rows = _rows(out, "host")
    for kind in ("onnx-fp32", "tflite-fp32"):
        assert rows[kind]["reference_map50"] >= 99 and rows[kind]["recall"] == 100
    for kind in ("onnx-int8", "tflite-int8"):
        assert rows[kind]["reference_map50"] >= 80 and rows[kind]["sqnr_db"]["output1"] > 15
    assert rows["torch-fp32"]["map50_95"] is None  # no labels: only the float model's boxes are the truth
    assert main(["bench", "--out", str(out), "--target", "host", *sshd_server.cli_options(), "--remote-python",
                 sys.executable, "--bench-runs", "10", "--bench-repeats", "1"]) == 0, capsys.readouterr().err
    evaluated = json.loads((out / "host" / "bench" / "bench.json").read_text())["board_evaluation"]
    assert evaluated["task"] == "detect" and evaluated["samples"] > 0
    assert {r["kind"] for r in evaluated["artifacts"]} == set(rows) - {"torch-fp32"}  # the bundle's artifacts
    for row in evaluated["artifacts"]:  # the same runtime code on the same machine: the same boxes
        assert row["same_detections"] == 100 and row["host_map50"] == 100 and row["board_map50_95"] is None, row
    assert main(["report", "--out", str(out), "--target", "host"]) == 0
    assert "On the board: detections from its own outputs" in (out / "host" / "report.md").read_text()
    bundle = out / "host" / "bundle"
    photo = tmp_path / "astronaut.png"
    _astronaut().save(photo)
    printed = subprocess.run([sys.executable, "run_model.py", "predict", "--artifact", "tflite-fp32", str(photo)],
                             cwd=bundle, capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[0].startswith(f"{photo}: ") and printed[-1] == f"  drawn: {tmp_path / 'astronaut.detections.png'}"
    first = [float(part.split("=")[1]) for part in printed[1].split(" at ")[1].split()]
    assert _face_iou(np.asarray([first]))[0] > 0.5  # the bundle's own runtime finds the face the host found
    assert Image.open(tmp_path / "astronaut.detections.png").size == (512, 512)


@pytest.mark.slow
def test_the_builtin_detector_for_a_pi_and_a_coral(tmp_path, small_config):
    """The built-in detector trained on the Fashion-MNIST canvases, compressed to the Pi's FLOPs budget (its blocks
    distilled without labels, its head and decoding kept, fine-tuned on the teacher's raw outputs and the labels; a
    detector is compressed to a budget given for it), for
    two boards: mAP per artifact against the labels and the float model, boxes and scores kept apart in every int8
    file, the report's picture."""
    from pipeline.orchestrator import Run

    out = tmp_path / "run"
    Run(small_config(out, model="fmnist-detector", targets="raspberry-pi-4,coral-edgetpu",
                     train={"epochs": 2, "train_subset": 3000}, eval_samples=150,
                     calibration={"num_samples": 64, "method": "minmax", "weight_rounding": "nearest"},
                     compress={"blockwise_epochs": 1, "finetune_epochs": 2, "blockwise_subset": 1000,
                               "finetune_subset": 3000, "val_samples": 300, "budget": {"flops_ratio": 0.69}},
                     detect={"decoder": "boxes-scores", "display_threshold": 0.1},  # a short training's scores
                     bench={"runs": 20, "warmup": 3, "max_seconds": 5.0, "repeats": 1})).execute()
    [compressed] = (out / "shared").glob("student-*/compress")
    report = json.loads((compressed / "compression.json").read_text())
    assert report["metric"] == "map50_95" and report["student"]["flops"] <= report["budget"]["max_flops"]
    assert report["teacher"]["test_map50_95"] > 5 and "| test mAP50-95 (%) |" in (compressed / "compression.md").read_text()
    pi, coral = _rows(out, "raspberry-pi-4"), _rows(out, "coral-edgetpu")
    assert set(pi) == {"torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8"}
    # the student (one short epoch of each phase here) finds garments, and its exports its boxes
    assert pi["torch-fp32"]["map50_95"] > 1 and report["student"]["test_map50_95"] > 1
    assert pi["onnx-fp32"]["reference_map50"] >= 99
    assert pi["tflite-fp16"]["drop"] < 0.5 and coral["tflite-int8"]["reference_map50"] >= 80
    _separate_int8_outputs(out)
    report = (out / "coral-edgetpu" / "report.md").read_text()
    assert "mAP50-95 (%)" in report and "![detections.png](detections.png)" in report
    assert (out / "coral-edgetpu" / "detections.png").stat().st_size > 1000
    manifest = json.loads((out / "coral-edgetpu" / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "detect" and manifest["detect"]["decoder"] == "boxes-scores"
    [int8] = [a for a in manifest["artifacts"] if a["kind"] == "tflite-int8"]
    assert [o["name"] for o in int8["outputs"]] == ["boxes", "scores"] and all(o["quant"] for o in int8["outputs"])


def test_a_tiny_detector_end_to_end_for_a_coral(tmp_path, small_config):
    """The fast tier's detector: the built-in one, briefly trained, exported, calibrated and converted to Coral's
    full-integer TFLite (builtin ops only, boxes and scores as their own int8 outputs), evaluated by mAP against the
    float model and benchmarked, with its report."""
    from pipeline.orchestrator import Run
    from pipeline.tflite_file import read_tflite

    out = tmp_path / "run"
    # the teacher of test_the_builtin_detector_for_a_pi_and_a_coral: trained once when both run
    Run(small_config(out, model="fmnist-detector", targets="coral-edgetpu", train={"epochs": 2, "train_subset": 3000},
                     eval_samples=40, calibration={"num_samples": 32, "method": "minmax", "weight_rounding": "nearest"},
                     detect={"decoder": "boxes-scores", "display_threshold": 0.05},
                     bench={"runs": 5, "warmup": 1, "max_seconds": 2.0, "repeats": 1})).execute()
    coral = _rows(out, "coral-edgetpu")
    assert set(coral) == {"torch-fp32", "tflite-fp32", "tflite-int8"}
    assert coral["tflite-fp32"]["reference_map50"] >= 99 and all(r["latency_ms"]["p50"] > 0 for r in coral.values())
    int8 = read_tflite(out / "coral-edgetpu" / "bundle" / "artifacts" / "tflite-int8.tflite")
    assert not int8.non_builtin and "CONV_2D" in int8.operators
    manifest = json.loads((out / "coral-edgetpu" / "bundle" / "manifest.json").read_text())
    [artifact] = [a for a in manifest["artifacts"] if a["kind"] == "tflite-int8"]
    assert [o["name"] for o in artifact["outputs"]] == ["boxes", "scores"] and all(o["quant"] for o in artifact["outputs"])
    assert "mAP50-95 (%)" in (out / "coral-edgetpu" / "report.md").read_text()


def _separate_int8_outputs(out: Path) -> None:
    """Boxes and scores each come from their own int8 tensor, with its own scale (never one concatenated
    per-tensor-quantized tensor): walking up from each output, past the decoding kept in float, to the int8 tensor
    it is computed from. On the Pi the decoding runs in float; on the Coral it is int8 to the outputs."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    from onnx import numpy_helper

    [onnx_int8] = (out / "shared").glob("**/quantize-*/model_int8.onnx")
    graph = onnx.load(str(onnx_int8)).graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    writers = {o: n for n in graph.node for o in n.output}

    def onnx_scale(tensor: str) -> float:
        node = writers[tensor]
        if node.op_type == "DequantizeLinear":
            return float(constants[node.input[1]])
        return onnx_scale(next(i for i in node.input if i in writers))  # the first non-constant input

    scales = [onnx_scale(o.name) for o in graph.output]
    assert len(scales) == 2 and scales[0] != scales[1]
    assert writers[graph.output[0].name].op_type != "DequantizeLinear"  # the Pi's decoding is float
    for board, float_decoding in (("raspberry-pi-4", True), ("coral-edgetpu", False)):
        interpreter = Interpreter(model_path=str(out / board / "bundle" / "artifacts" / "tflite-int8.tflite"))
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        writer = {int(o["outputs"][0]): o for o in interpreter._get_ops_details()}

        def tflite_scale(index: int) -> float:
            scale = details[index]["quantization"][0]
            if scale:
                return float(scale)
            op = writer[index]
            return tflite_scale(next(int(i) for i in op["inputs"] if int(i) in writer))

        outputs = interpreter.get_output_details()
        found = [tflite_scale(o["index"]) for o in outputs]
        assert len(found) == 2 and found[0] != found[1]
        assert all(not o["quantization"][0] for o in outputs) == float_decoding
