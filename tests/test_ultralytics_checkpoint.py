"""An Ultralytics checkpoint (``best.pt``, a real one from another project's wheel) as ``--model``: without the
ultralytics package a one-line error says how to export it; with it the pipeline exports it once, offline, and reads
the ONNX file's metadata as for any Ultralytics export."""
from __future__ import annotations

import importlib.util

import onnx
import pytest

from pipeline.cli import main
from pipeline.sources.model_card import onnx_card
from pipeline.sources.ultralytics_checkpoint import exported_onnx, is_ultralytics_checkpoint
from tests.wheels import wheel_file

HAS_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return wheel_file("yolo-checkpoint", tmp_path_factory.mktemp("fall"))


def test_a_checkpoint_is_told_from_a_torchscript_file(checkpoint, tmp_path):
    import torch

    assert is_ultralytics_checkpoint(checkpoint)
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), tmp_path / "scripted.pt")
    assert not is_ultralytics_checkpoint(tmp_path / "scripted.pt")


@pytest.mark.skipif(HAS_ULTRALYTICS, reason="the ultralytics package is installed: the checkpoint is exported")
def test_without_ultralytics_a_checkpoint_is_a_one_line_error(checkpoint, tmp_path, capsys):
    code = main(["run", "--model", str(checkpoint), "--target", "raspberry-pi-4", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {checkpoint}: an Ultralytics checkpoint") and "yolo export model=" in err, err
    assert not list((tmp_path / "run").rglob("*.onnx"))


@pytest.mark.skipif(not HAS_ULTRALYTICS, reason="the ultralytics package is not installed (the optional extra)")
def test_with_ultralytics_a_checkpoint_is_exported_once_at_the_size_asked(checkpoint, tmp_path):
    lines: list[str] = []
    first = exported_onnx(checkpoint, tmp_path, (320, 320), 17, lines.append)
    assert exported_onnx(checkpoint, tmp_path, (320, 320), 17, lines.append) == first and len(lines) == 1
    model = onnx.load(str(first))
    assert model.opset_import[0].version == 17
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 320, 320]
    card = onnx_card(first)
    assert card.task == "detect" and list(card.classes) == ["Normal", "Fall"] and card.image_hw == (320, 320)
    assert not list(checkpoint.parent.glob("*.onnx")), "nothing is written beside the user's file"
