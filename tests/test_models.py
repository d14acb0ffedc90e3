"""Model sources: built-ins, factories with state_dicts, TorchScript and torch.export files, and their errors."""
import numpy as np
import pytest
import torch

from pipeline.errors import ModelError
from pipeline.nets import fmnist_resnet, fmnist_tiny
from pipeline.sources import ModelSource, build_model
from pipeline.torchmodel import check_input, count_flops, count_params


def test_default_teacher_is_over_parameterised():
    model = fmnist_resnet()
    assert count_params(model) > 500_000
    # one conv of 3x3x1x32 over 28x28 alone is 2 * 9 * 32 * 784 FLOPs; the counter counts a MAC as 2
    conv = torch.nn.Conv2d(1, 32, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 1, 28, 28)) == 2 * 9 * 32 * 28 * 28


def test_factory_with_state_dict(tmp_path):
    reference = fmnist_tiny()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = build_model(ModelSource("tests.helpers:tiny_factory", str(tmp_path / "w.pt")), 1, 10)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), reference.eval()(x))


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_torchscript_and_exported_files(tmp_path, suffix):
    reference = fmnist_tiny().eval()
    x = torch.randn(1, 1, 28, 28)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.jit.trace(reference, x).save(str(path))
    else:
        torch.export.save(torch.export.export(reference, (x,)), str(path))
    model = build_model(ModelSource(str(path)), 1, 10)
    torch.testing.assert_close(model(x), reference(x))


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError) as info:
        build_model(ModelSource("fmnist-tiny", str(path)), 1, 10)
    assert str(path) in str(info.value) and "not a readable PyTorch checkpoint" in str(info.value)


def test_mismatched_checkpoint(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(fmnist_resnet().state_dict(), path)
    with pytest.raises(ModelError) as info:
        build_model(ModelSource("fmnist-tiny", str(path)), 1, 10)
    message = str(info.value)
    assert str(path) in message and "does not match model 'fmnist-tiny'" in message and "shape mismatch" in message


def test_wrong_input_shape():
    model = build_model(ModelSource("tests.helpers:rgb_net"), 3, 3)
    with pytest.raises(ModelError, match=r"tests.helpers:rgb_net: does not accept input of shape \[1, 1, 28, 28\]"):
        check_input(model, (1, 1, 28, 28), "tests.helpers:rgb_net", 3)


def test_wrong_number_of_classes():
    with pytest.raises(ModelError, match=r"output \[1, 10\] is not \[batch, 3\] logits"):
        check_input(fmnist_tiny(), (1, 1, 28, 28), "fmnist-tiny", 3)


@pytest.mark.parametrize("name, message", [
    ("fmnist-resnt", "unknown model (did you mean 'fmnist-resnet'?)"),
    ("no_such_module:make", "cannot import module 'no_such_module'"),
    ("tests.helpers:missing", "has no callable 'missing'"),
])
def test_unknown_models(name, message):
    with pytest.raises(ModelError) as info:
        build_model(ModelSource(name), 1, 10)
    assert message in str(info.value)
    assert np.char.count(str(info.value), "\n") == 0


def test_interrupted_teacher_training_resumes_to_the_same_weights(monkeypatch):
    import pipeline.train as train_module
    from pipeline.config import TrainOptions
    from pipeline.data import PreprocessSpec, load_dataset
    from pipeline.train import train_classifier

    data = load_dataset(None)
    train, test = data.train.take(1200, seed=2), data.test.take(200, seed=2)
    spec, options = PreprocessSpec.from_images(train.read()), TrainOptions(epochs=3)

    def trained(key: str) -> dict:
        torch.manual_seed(0)
        model, _ = train_classifier(fmnist_tiny(), train, test, spec, options, {"test": key})
        return model.state_dict()

    straight = trained("straight")
    evaluate, calls = train_module.top1, []

    def interrupted_in_the_second_epoch(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(train_module, "top1", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        trained("resumed")
    monkeypatch.undo()
    [resume_file] = (train_module.cache_dir() / "teachers").glob("*.resume.pt")
    assert torch.load(resume_file, weights_only=True)["epoch"] == 1
    resumed = trained("resumed")
    assert not resume_file.exists()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
