"""The shipped teacher: the default run loads it instead of training, it is the file its record names, and it is
the trained network the record says (top-1 on Fashion-MNIST test images)."""
import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.data import load_dataset
from pipeline.data.preprocess import DATASET, PreprocessOptions, resolve
from pipeline.errors import ModelError
from pipeline.nets import fmnist_resnet
from pipeline.orchestrator import run
from pipeline.teachers import HERE, shipped_teacher
from pipeline.train import evaluate_torch

[RECORD] = [json.loads(path.read_text()) for path in HERE.glob("fmnist-resnet.json")]


def test_the_default_run_loads_the_shipped_teacher_instead_of_training(tmp_path):
    run(stages=["model"], model="fmnist-resnet", out=str(tmp_path), compress={"enabled": False})
    training = json.loads((tmp_path / ".state" / "model.json").read_text())["data"]["training"]
    assert training["shipped"] == "fmnist-resnet.pt" and training["seconds"] == 0.0
    assert training["test_top1"] == RECORD["test_top1"] >= 92.5 and training["made"]["command"] == RECORD["command"]


def test_a_changed_recipe_or_the_switch_trains_instead():
    assert shipped_teacher(RECORD["recipe_key"]) is not None
    assert shipped_teacher(RECORD["recipe_key"][::-1]) is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_SHIPPED_TEACHERS", "0")
        assert shipped_teacher(RECORD["recipe_key"]) is None


def test_a_damaged_file_is_named(tmp_path):
    for suffix in (".json", ".pt"):
        shutil.copyfile(HERE / f"fmnist-resnet{suffix}", tmp_path / f"fmnist-resnet{suffix}")
    with open(tmp_path / "fmnist-resnet.pt", "r+b") as weights:
        weights.seek(-8, 2)
        weights.write(b"\0" * 8)
    with pytest.raises(ModelError, match=r"fmnist-resnet.pt: missing or not the file its record fmnist-resnet.json"):
        shipped_teacher(RECORD["recipe_key"], tmp_path)


def test_the_shipped_weights_are_the_trained_teacher():
    data = load_dataset(None)
    preprocess = resolve(PreprocessOptions(), (PreprocessOptions(preset=DATASET), "built-in"), 1, data.train, "x")
    model = fmnist_resnet()
    model.load_state_dict(torch.load(HERE / "fmnist-resnet.pt", map_location="cpu", weights_only=True))
    test = data.test.take(2000, 0)
    accuracy = evaluate_torch(model.eval(), preprocess.apply(test.read()), np.asarray(test.labels))
    assert accuracy > RECORD["test_top1"] - 1.5  # 2,000 of the 10,000 images the record's figure is on
