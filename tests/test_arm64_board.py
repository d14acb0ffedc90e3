"""The bundle on an aarch64 board: a Debian arm64 userland under qemu-user emulation with its own sshd
(tests/arm64_board.py), reached by `pipeline bench --host` as a real board would be."""
import json
import shutil

from pipeline.cli import main
from pipeline.targets import load_target

VENV_PYTHON = "/root/.venvs/ep/bin/python"  # where the Raspberry Pi profile's install commands put the runtimes


def test_bundle_runs_and_evaluates_on_an_emulated_arm64_board(tiny_run, arm64_board, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(run.out, out)  # the session's run stays untouched
    # --install: the Raspberry Pi 4 profile's own install commands run on the board (litert for the TFLite
    # kinds, onnxruntime for the ONNX ones), into the venv that --remote-python names
    options = ["--out", str(out), "--target", "raspberry-pi-4", *arm64_board.cli_options(), "--remote-python",
               VENV_PYTHON, "--install", "--bench-runs", "20", "--bench-repeats", "1"]
    assert main(["bench", *options]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    profile = load_target("raspberry-pi-4")
    for runtime in ("litert", "onnxruntime"):
        assert f"installing {runtime} on {arm64_board.target().label}: {profile.install[runtime]}" in said
    bench = json.loads((out / "raspberry-pi-4" / "bench" / "bench.json").read_text())
    assert bench["system"]["machine"] == "aarch64" and bench["system"]["emulated"].startswith("qemu-user")
    kinds = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8"]
    assert sorted(r["artifact"] for r in bench["results"]) == sorted(kinds)
    # Evaluated on the board: its own outputs, scored here, against the same artifacts run on this host.
    evaluation = bench["board_evaluation"]
    assert evaluation["samples"] > 0 and sorted(r["kind"] for r in evaluation["artifacts"]) == sorted(kinds)
    for row in evaluation["artifacts"]:
        assert row["agreement"] >= 99.0, row  # another CPU, another runtime build: the same predictions
        assert abs(row["board_top1"] - row["host_top1"]) <= 1.0, row
        assert row["max_logit_diff"] < (0.5 if "int8" in row["kind"] else 1e-2), row
    assert main(["report", "--out", str(out)]) == 0
    md = (out / "raspberry-pi-4" / "report.md").read_text()
    assert "an EMULATED board, over SSH" in md and "the latencies are the emulator's, not the board's" in md
    assert "## On the board: top-1 from its own outputs" in md
