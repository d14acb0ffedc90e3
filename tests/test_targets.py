"""Every target profile loads and follows the conventions; bad profiles fail with file, field, value and valid set."""
from pathlib import Path

import pytest
import yaml

from pipeline import list_targets, load_target
from pipeline.formats import FORMATS
from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.targets import KNOWN_RUNTIMES, TARGETS_DIR

BOARDS = sorted(path.stem for path in TARGETS_DIR.glob("*.yaml"))  # every profile file, none named here


def test_list_targets_is_every_profile_file():
    assert BOARDS and list_targets() == BOARDS


@pytest.mark.parametrize("name", BOARDS)
def test_every_profile_is_valid_and_cites_its_source(name):
    profile = load_target(name)
    assert profile.name == name
    assert set(profile.artifacts) <= set(FORMATS)
    for kind in profile.artifacts:  # a runtime of the board runs each kind, and the bundle can carry it
        assert set(FORMATS[kind].runtimes) & set(profile.runtimes) and FORMATS[kind].deployable, kind
    assert 13 <= profile.onnx_opset <= 21 and profile.threads >= 1 and profile.accuracy_tolerance > 0
    if name != "host":
        assert "Sources:" in (TARGETS_DIR / f"{name}.yaml").read_text(), "cite the board's public specification"


@pytest.mark.parametrize("name", BOARDS)
def test_every_runtime_has_an_install_command(name):
    profile = load_target(name)
    assert set(profile.runtimes) <= set(profile.install) <= set(KNOWN_RUNTIMES)
    assert all(command.strip() and "\n" not in command for command in profile.install.values())


def test_board_specific_int8_schemes():
    assert load_target("coral-edgetpu").int8.io_dtype.value == "uint8"
    assert load_target("jetson-nano").int8.activation_symmetric
    assert {"onnx-fp16", "onnx-int8"} <= set(load_target("jetson-orin-nano").artifacts)
    assert load_target("raspberry-pi-4").int8.granularity.value == "per-channel"


def test_unknown_target_lists_the_valid_ones(capsys):
    assert main(["targets", "show", "raspbery-pi-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown target 'raspbery-pi-4'" in err and "did you mean 'raspberry-pi-4'" in err and "jetson-nano" in err


def _profile(tmp_path: Path, **changes) -> Path:
    text = (TARGETS_DIR / "raspberry-pi-4.yaml").read_text().replace("name: raspberry-pi-4", "name: my-board")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


def test_user_profile_by_path(tmp_path):
    assert load_target(str(_profile(tmp_path))).name == "my-board"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("threads: 4", "threads: four", "field 'threads': bad value 'four', expected an integer >= 1"),
        ("granularity: per-channel", "granularity: per-row",
         "field 'int8.granularity': bad value 'per-row', expected one of per-channel, per-channel-conv, per-tensor"),
        ("tflite-int8]", "tflite-int4]", "field 'artifacts': bad value 'tflite-int4', expected one of torch-fp32"),
        ("runtimes: [litert, tflite-runtime, onnxruntime]", "runtimes: [onnxruntime]",
         "field 'artifacts': bad value 'tflite-fp32', expected a kind that one of the profile's runtimes "
         "(onnxruntime) runs; tflite-fp32 runs on litert, tflite-runtime"),
        ("max_flops: 40M", "max_flops: lots", "field 'budgets.max_flops': bad value 'lots'"),
        ("threads: 4", "thread: 4", "unknown field 'thread' (did you mean 'threads'?)"),
        ("onnx_opset: 17", "onnx_opset: 30", "field 'onnx_opset': bad value 30"),
        ("  onnxruntime: python3 -m venv ~/.venvs/ep && ~/.venvs/ep/bin/pip install onnxruntime numpy\n", "",
         "missing field 'install.onnxruntime': expected the shell command that installs onnxruntime on this board"),
        ("  tflite-runtime: python3", "  tflite_runtime: python3",
         "unknown field 'install.tflite_runtime' (did you mean 'tflite-runtime'?)"),
        ("  litert: python3 -m venv ~/.venvs/ep && ~/.venvs/ep/bin/pip install ai-edge-litert numpy", "  litert: ''",
         "field 'install.litert': bad value '', expected a non-empty string"),
    ],
)
def test_bad_profile_names_file_field_and_value(tmp_path, old, new, message):
    path = _profile(tmp_path, **{old: new})
    with pytest.raises(ConfigError) as info:
        load_target(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_install_section_is_required(tmp_path):
    text = _profile(tmp_path).read_text()
    without_install = text[:text.index("install:")] + text[text.index("# Roofline"):]
    (tmp_path / "board.yaml").write_text(without_install)
    with pytest.raises(ConfigError, match="board.yaml: missing field 'install'"):
        load_target(str(tmp_path / "board.yaml"))
    (tmp_path / "board.yaml").write_text(without_install + "install: pip install onnxruntime\n")
    with pytest.raises(ConfigError, match="field 'install': bad value 'pip install onnxruntime', expected a mapping"):
        load_target(str(tmp_path / "board.yaml"))


def test_targets_show_prints_install_and_performance(capsys):
    assert main(["targets", "show", "jetson-nano"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["install"]["tensorrt"] == load_target("jetson-nano").install["tensorrt"]
    assert shown["performance"]["peak_gops"]["fp16"] == 472 and shown["performance"]["source"].startswith("https://")


def test_targets_list_cli(capsys):
    assert main(["targets", "list"]) == 0
    assert "coral-edgetpu" in capsys.readouterr().out
