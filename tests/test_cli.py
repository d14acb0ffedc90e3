"""The command line is one table (``pipeline/cli_options.py``): each command shows and takes its own options only, a
flag of another command is a one-line error naming who takes it, every row sets a real configuration field, and the
reference in docs/cli.md is the table's."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.cli_options import COMMAND_GROUPS, OPTIONS, options_of, reference
from pipeline.config import RunConfig

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.lint


def _help(command: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pipeline", command, "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  --")]


def test_each_command_shows_its_own_options_only():
    shown = _help("convert")
    assert shown == ["--config", "--out", "--target", "--force", "--from", "--tflite-pseudo-ops"]
    assert len(_help("run")) == len(OPTIONS) + 1  # --no-compress beside --compress
    assert "--calibration-samples" in _help("quantize") and "--epochs" not in _help("quantize")


def test_a_flag_of_another_command_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["convert", "--out", "nowhere", "--calibration-samples", "8"])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and err == (
        "error: pipeline: --calibration-samples does not apply to 'pipeline convert' (it sets calibration.num_samples; "
        "run, quantize take it) (see pipeline --help)")
    assert main(["compress", "--no-compress", "--out", "nowhere"]) == 2
    assert "pipeline compress --no-compress: nothing to do" in capsys.readouterr().err


def _field_exists(cls, path: list[str]) -> bool:
    found = {f.name: f for f in dataclasses.fields(cls)}
    if path[0] not in found:
        return False
    if len(path) == 1:
        return True
    default = found[path[0]].default_factory() if found[path[0]].default_factory is not dataclasses.MISSING else None
    return path[0] == "detect" or (dataclasses.is_dataclass(default) and _field_exists(type(default), path[1:]))


def test_every_row_sets_a_configuration_field_and_every_command_has_rows():
    for option in OPTIONS:
        assert option.field is None or _field_exists(RunConfig, option.field.split(".")), option.flag
    assert all(options_of(command) for command in COMMAND_GROUPS)


def test_the_cli_reference_is_the_tables():
    assert (REPO / "docs" / "cli.md").read_text() == reference(), "run: python -m pipeline.cli_options > docs/cli.md"
