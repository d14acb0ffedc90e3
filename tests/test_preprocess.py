"""The model's preprocessing: presets, the user's options over the model's own, resize and centre crop as timm and
torchvision evaluate, and a real photo classified on the board exactly as on the host."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from board_runtime.imaging import load_image, to_input
from pipeline.cli import main
from pipeline.data import Dataset, load_dataset
from pipeline.data.datasets import HELD_OUT_FRACTION
from pipeline.data.preprocess import PreprocessOptions, PreprocessSpec, resolve
from pipeline.errors import ConfigError, ModelError
from pipeline.targets import TARGETS_DIR

skimage_data = pytest.importorskip("skimage.data")


def test_resize_then_centre_crop_as_torchvision_evaluates(tmp_path):
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")  # 600 x 400
    image = load_image(tmp_path / "coffee.png", resize=256, crop=224, interpolation="bicubic")
    assert image.shape == (224, 224, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    # torchvision: Resize(256) makes the shorter side 256 (600 x 400 -> 384 x 256), CenterCrop(224) rounds the offsets
    expected = Image.fromarray(skimage_data.coffee()).resize((384, 256), Image.BICUBIC).crop((80, 16, 304, 240))
    np.testing.assert_array_equal(image, np.asarray(expected, np.float32) / 255)
    with pytest.raises(ValueError, match="smaller than the 300x300 crop"):
        load_image(tmp_path / "coffee.png", resize=256, crop=300)


def test_presets_channel_order_and_the_users_options_over_the_models():
    images = np.random.default_rng(0).random((8, 4, 4, 3)).astype(np.float32)
    train = Dataset.from_arrays(images, np.zeros(8))
    imagenet = resolve(PreprocessOptions(preset="imagenet"), None, 3, train, "m")
    assert imagenet.mean == (0.485, 0.456, 0.406) and "the configuration (preset imagenet)" in imagenet.source
    carried = (PreprocessOptions(mean=(0.5,), std=(0.25,), resize=40, crop=32, interpolation="bicubic"), "its cfg")
    own = resolve(PreprocessOptions(), carried, 3, train, "m")
    assert (own.mean, own.std, own.resize, own.crop, own.interpolation, own.source) == (
        (0.5,) * 3, (0.25,) * 3, 40, 32, "bicubic", "its cfg")
    mixed = resolve(PreprocessOptions(preset="unit", crop=28, channel_order="BGR"), carried, 3, train, "m")
    assert (mixed.resize, mixed.crop, mixed.interpolation, mixed.channel_order) == (40, 28, "bicubic", "BGR")
    np.testing.assert_allclose(mixed.apply(images), images[..., ::-1].transpose(0, 3, 1, 2))  # BGR, unit scale
    dataset = resolve(PreprocessOptions(preset="dataset"), None, 3, train, "m")
    np.testing.assert_allclose(dataset.apply(images).mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert PreprocessSpec.from_dict(mixed.to_dict()) == mixed
    with pytest.raises(ModelError, match="m: the model's preprocessing is unknown; give it with --preprocess"):
        resolve(PreprocessOptions(), None, 3, train, "m")
    with pytest.raises(ConfigError, match="2 mean/std values for images with 3 channels"):
        resolve(PreprocessOptions(mean=(0.5, 0.5), std=(0.5, 0.5)), None, 3, train, "m")


@pytest.mark.parametrize("options, message", [
    ({"preset": "imagnet"}, "preprocess.preset: bad value 'imagnet', expected one of imagenet, inception"),
    ({"mean": "0.5,0.5"}, "preprocess: mean and std go together"),
    ({"mean": "0.5,x", "std": "1,1"}, "preprocess.mean: bad value '0.5,x', expected numbers per channel"),
    ({"preset": "unit", "mean": "0.5", "std": "0.5"}, "preset 'unit' and mean/std both given; choose one"),
    ({"resize": 200, "crop": 224}, "preprocess.crop: bad value 224, expected at most resize (200)"),
    ({"interpolation": "lanczos"}, "preprocess.interpolation: bad value 'lanczos', expected one of bilinear"),
    ({"channel_order": "GBR"}, "preprocess.channel_order: bad value 'GBR', expected RGB or BGR"),
])
def test_bad_preprocess_options_name_field_and_value(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PreprocessOptions(**options)


def _profile(tmp_path: Path) -> Path:
    """ONNX artifacts only (no conversion to wait for); any accuracy passes: the nets here are untrained."""
    path = tmp_path / "onnx-board.yaml"
    path.write_text((TARGETS_DIR / "jetson-nano.yaml").read_text().replace("name: jetson-nano", "name: onnx-board")
                    .replace("accuracy_tolerance: 1.0", "accuracy_tolerance: 100"))
    return path


@pytest.mark.slow
def test_a_photo_on_the_board_gives_the_hosts_prediction(photo_folder, tmp_path, capsys):
    """The model carries its preprocessing (timm's pretrained_cfg layout); the run resizes and crops the photos as
    it says, the report says where it came from, and the bundle's runner classifies a full-size PNG as the host."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--target", str(_profile(tmp_path)), "--model", "tests.helpers:pretrained_cfg_net",
            "--data", str(photo_folder), "--calibration-samples", "8", "--no-compress"]
    assert main(["run", *args, "--bench-runs", "5", "--bench-repeats", "1"]) == 0, capsys.readouterr().err
    record = json.loads((out / ".state" / "model.json").read_text())["data"]
    spec = PreprocessSpec.from_dict(record["preprocess"])
    assert (spec.mean, spec.resize, spec.crop, spec.interpolation) == ((0.5,) * 3, 40, 32, "bicubic")
    assert spec.source == "the model's pretrained_cfg (tests.helpers:pretrained_cfg_net)"
    assert record["input_shape"] == [1, 3, 32, 32]
    assert "from the model's pretrained_cfg" in (out / "onnx-board" / "report.md").read_text()
    bundle = out / "onnx-board" / "bundle"
    assert json.loads((bundle / "manifest.json").read_text())["preprocess"] == record["preprocess"]
    splits = load_dataset(photo_folder, resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation)
    pixels = np.concatenate([splits.train.read(), splits.test.read()])  # what the pipeline read from the folder
    model = torch.jit.load(str(out / "shared" / "model" / "model.torchscript.pt"))
    for photo in sorted(photo_folder.glob("*/*-3.png")):
        image = load_image(photo, resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation)
        assert any(np.array_equal(image, x) for x in pixels)  # the board's reader, the host's pixels
        host = model(torch.from_numpy(spec.apply(image[None]))).detach().numpy()[0]
        done = subprocess.run([sys.executable, str(bundle / "run_model.py"), "predict", "--artifact", "onnx-fp32",
                               str(photo)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        top = int(host.argmax())
        assert f"(class {top}, logit {host[top]:.3f})" in done.stdout, (photo.name, done.stdout, host)


def test_the_users_preprocessing_wins_and_a_model_without_one_is_refused(photo_folder, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--out", str(out), "--target", str(_profile(tmp_path)), "--data", str(photo_folder), "--no-compress"]
    assert main(["export", *base, "--model", "tests.helpers:rgb_net"]) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: tests.helpers:rgb_net: the model's preprocessing is unknown; give it with --preprocess "
                   "imagenet|inception|unit|raw|dataset or --mean/--std (per channel, on pixels in [0, 1])")
    assert main(["export", *base, "--model", "tests.helpers:pretrained_cfg_net", "--preprocess", "imagenet",
                 "--resize", "36", "--crop", "28"]) == 0
    record = json.loads((out / ".state" / "model.json").read_text())["data"]
    spec = PreprocessSpec.from_dict(record["preprocess"])
    assert (spec.mean, spec.resize, spec.crop, spec.interpolation) == ((0.485, 0.456, 0.406), 36, 28, "bicubic")
    assert spec.source == "the configuration (preset imagenet)" and record["input_shape"] == [1, 3, 28, 28]
    np.testing.assert_allclose(to_input(np.full((1, 2, 2, 3), 0.485, np.float32), record["preprocess"])[0, 0], 0,
                               atol=1e-6)


@pytest.mark.slow
def test_data_holding_a_few_of_the_models_classes(photo_folder, tmp_path, capsys):
    """A five-class model, photos of three of its classes: two folders named by label, one by index."""
    import shutil

    data = tmp_path / "photos"
    shutil.copytree(photo_folder, data)
    (data / "rocket").rename(data / "4")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ncup\ndog\nperson\nrocket\n")
    out = tmp_path / "run"
    base = ["--out", str(out), "--target", str(_profile(tmp_path)), "--data", str(data), "--model",
            "tests.helpers:five_class_net", "--preprocess", "unit", "--resize", "40", "--crop", "32", "--no-compress"]
    assert main(["export", *base]) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("output [1, 5] is not [batch, 3] logits for the data's 3 classes; if the model's 5 classes "
                        "include the data's, pass --labels FILE (the model's class names in output order)")
    assert main(["run", *base, "--labels", str(labels), "--calibration-samples", "8", "--bench-runs", "5",
                 "--bench-repeats", "1"]) == 0, capsys.readouterr().err
    record = json.loads((out / ".state" / "model.json").read_text())["data"]
    assert record["classes"] == ["cat", "cup", "dog", "person", "rocket"]
    evaluations = json.loads((out / ".state" / "onnx-board__evaluate.json").read_text())["data"]["evaluations"]
    held_out = round(len(list(data.glob("*/*.png"))) * HELD_OUT_FRACTION)  # scored on the model's own indices
    assert evaluations[0]["kind"] == "torch-fp32" and evaluations[0]["samples"] == held_out
    bundle = out / "onnx-board" / "bundle"
    done = subprocess.run([sys.executable, str(bundle / "run_model.py"), "predict", "--artifact", "onnx-fp32",
                           str(next((data / "4").glob("*.png")))], capture_output=True, text=True)
    assert done.returncode == 0 and any(f": {name} (class {i}," in done.stdout
                                        for i, name in enumerate(record["classes"])), done.stdout
