"""An ONNX file as the model: a real one nobody here wrote (SqueezeNet from the onnx wheel's test data: opset 9,
weights as ConstantOfShape nodes, initializers listed as inputs, a Caffe-style [1, 1000, 1, 1] output)."""
import json
from pathlib import Path

import onnx
import pytest

from pipeline.cli import main
from pipeline.targets import TARGETS_DIR

SQUEEZENET = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"


def _args(tmp_path: Path, model: Path, data: Path, labels: Path) -> list[str]:
    profile = tmp_path / "onnx-board.yaml"  # ONNX artifacts only; the SqueezeNet's weights are constants
    profile.write_text((TARGETS_DIR / "jetson-nano.yaml").read_text().replace("name: jetson-nano", "name: onnx-board")
                       .replace("accuracy_tolerance: 1.0", "accuracy_tolerance: 100"))
    return ["--out", str(tmp_path / "run"), "--target", str(profile), "--model", str(model), "--data", str(data),
            "--labels", str(labels), "--preprocess", "imagenet", "--resize", "256", "--crop", "224"]


@pytest.mark.slow
def test_an_onnx_file_runs_through_as_its_own_reference(imagenet_photos, tmp_path, capsys):
    assert SQUEEZENET.is_file(), "the onnx wheel ships its light test models"
    data, labels = imagenet_photos
    args = _args(tmp_path, SQUEEZENET, data, labels)
    assert main(["run", *args, "--calibration-samples", "8", "--calibration-method", "minmax", "--bench-runs", "5",
                 "--bench-repeats", "1", "--max-latency-ms", "0.001"]) == 0
    captured = capsys.readouterr()
    assert f"[skip] compress: {SQUEEZENET} is not a PyTorch model" in captured.out
    report = json.loads((tmp_path / "run" / "onnx-board" / "report.json").read_text())
    assert report["reference"] == {"kind": "onnx-fp32", "label": "ONNX fp32"}
    assert [r["kind"] for r in report["rows"]] == ["onnx-fp32", "onnx-fp16", "onnx-int8"]
    assert report["model"]["params"] > 500_000 and report["model"]["flops"] > 100e6
    assert report["export_parity"] <= 1e-5  # opset 9 -> 13 changed nothing the runtime computes
    # A latency budget nobody can meet: timed here, not on the Nano, and even the Nano's roofline bound is over it.
    latency = report["budget_text"]
    assert latency.startswith("latency at most 0.001 ms per image (1e+06 fps): ") and "on this host, not the board" \
        in latency and latency.endswith("; OVER even so)"), latency
    prepared = onnx.load(str(tmp_path / "run" / "shared" / "export-opset13" / "model.onnx"))
    assert prepared.opset_import[0].version == 13 and not any(n.op_type == "ConstantOfShape" for n in prepared.graph.node)
    assert [i.name for i in prepared.graph.input] == ["input"]
    assert [d.dim_value for d in prepared.graph.output[0].type.tensor_type.shape.dim] == [1, 1000]
    # The profile's TensorRT 8.2 parses every op of this real model, and the pipeline's int8 Q/DQ conforms to
    # TensorRT's rules; a Nano's GPU still builds no int8 engine.
    compat = {r["kind"]: r for r in report["compatibility"]}
    assert compat["onnx-fp32"]["toolchain"] == "TensorRT 8.2 ONNX parser (JetPack 4.6.1)"
    assert compat["onnx-fp32"]["verdict"].startswith("all ") and compat["onnx-fp16"]["verdict"].startswith("all ")
    assert compat["onnx-int8"]["facts"]["qdq_conforming"] and "Int8 support" in compat["onnx-int8"]["verdict"]


def dynamic_squeezenet(folder: Path) -> Path:
    """The SqueezeNet with its image input's batch, height and width dynamic (its first inputs are weights)."""
    model = onnx.load(str(SQUEEZENET))
    [image] = [i for i in model.graph.input if i.name == "data_0"]
    for dim, name in zip(image.type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if name:
            dim.Clear()
            dim.dim_param = name
    onnx.save(model, str(folder / "dynamic.onnx"))
    return folder / "dynamic.onnx"


def test_a_dynamic_input_is_fixed_from_the_data_and_a_wrong_size_is_named(imagenet_photos, tmp_path, capsys):
    data, labels = imagenet_photos
    dynamic = dynamic_squeezenet(tmp_path)
    assert main(["export", *_args(tmp_path, dynamic, data, labels)]) == 0
    exported = onnx.load(str(tmp_path / "run" / "shared" / "export-opset13" / "model.onnx"))
    assert [d.dim_value for d in exported.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    wrong = _args(tmp_path, SQUEEZENET, data, labels)
    wrong[wrong.index("--crop") + 1] = "200"
    assert main(["export", *wrong]) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {SQUEEZENET}: input 'data_0' is [1, 3, 224, 224], the data gives [1, 3, 200, 200] (NCHW); resize or "
        "crop the images to the model's size (--resize/--crop)")
