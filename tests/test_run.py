"""The whole pipeline on a small real configuration: outputs, reports, bundles, skipping and resuming."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.orchestrator import Run

ALL_PI = ["torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8"]


def test_report_has_a_row_per_artifact(tiny_run):
    run, _ = tiny_run
    pi = run.out / "raspberry-pi-4"
    report = (pi / "report.md").read_text()
    for kind in ALL_PI:
        assert f"| {kind} |" in report
    assert "Recommended artifact:" in report and "multiply-add as 2" in report
    data = json.loads((pi / "report.json").read_text())
    rows = {r["kind"]: r for r in data["rows"]}
    assert list(rows) == ALL_PI
    for row in rows.values():
        assert row["size_bytes"] > 0 and row["latency_ms"]["p50"] > 0 and row["peak_rss_mb"] > 0
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
    assert rows["onnx-fp32"]["max_logit_diff"] < 1e-3 and rows["onnx-fp32"]["agreement"] == 100.0
    assert rows["tflite-fp32"]["max_logit_diff"] < 1e-3
    assert rows["onnx-int8"]["agreement"] > 90 and rows["tflite-int8"]["agreement"] > 90
    rec = data["recommendation"]
    eligible = [r for r in data["rows"] if r["kind"] != "torch-fp32" and r["drop"] <= 1.0]
    assert rec["kind"] == min(eligible, key=lambda r: r["latency_ms"]["p50"])["kind"]


def test_html_report_is_self_contained(tiny_run):
    run, _ = tiny_run
    page = (run.out / "raspberry-pi-4" / "report.html").read_text()
    # accuracy vs latency, size, latency, and the sensitivity plot of each int8 artifact (ONNX and TFLite)
    assert page.count("data:image/png;base64,") == 5
    assert "src=\"http" not in page and "<link" not in page


def test_bundle_manifest_verifies_and_runner_predicts(tiny_run, tmp_path):
    run, _ = tiny_run
    bundle = run.out / "coral-edgetpu" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in manifest["artifacts"]}
    assert set(kinds) == {"tflite-fp32", "tflite-int8"}
    int8 = kinds["tflite-int8"]
    assert int8["input_layout"] == "NHWC" and int8["input_shape"] == [1, 28, 28, 1]
    assert int8["input_dtype"] == "uint8" and int8["input_quant"]["scale"] > 0 and int8["output_quant"]["scale"] > 0
    assert manifest["preprocess"]["mean"] and manifest["classes"][9] == "Ankle boot"
    assert {"torch", "onnx2tf", "ai-edge-litert"} <= set(manifest["tool_versions"])
    runner = [sys.executable, str(bundle / "run_model.py")]
    ok = subprocess.run(runner + ["verify"], capture_output=True, text=True)
    assert ok.returncode == 0 and f"{len(manifest['files'])} of {len(manifest['files'])} files verified" in ok.stdout
    image = tmp_path / "shoe.npy"
    from pipeline.data import load_dataset

    test = load_dataset(None).test
    np.save(image, (test.read()[0, ..., 0] * 255).astype(np.uint8))
    out = subprocess.run(runner + ["predict", "--artifact", "tflite-int8", str(image)], capture_output=True, text=True)
    assert out.returncode == 0 and "(class" in out.stdout
    # a bundle that was tampered with fails verification
    copy = tmp_path / "bundle"
    subprocess.run(["cp", "-r", str(bundle), str(copy)], check=True)
    (copy / "artifacts" / "tflite-int8.tflite").write_bytes(b"tampered")
    bad = subprocess.run([sys.executable, str(copy / "run_model.py"), "verify"], capture_output=True, text=True)
    assert bad.returncode == 1 and "MISMATCH artifacts/tflite-int8.tflite" in bad.stdout


def test_shared_stages_ran_once_for_two_targets(tiny_run):
    run, lines = tiny_run
    ran = [line.split()[-1] for line in lines if line.startswith("[run ]")]
    assert ran.count("export-opset17") == 1 and ran.count("calibration-samples") == 1
    # ranges of the model with its int8 weights chosen layer by layer, per int8 scheme: the Pi's onnx-int8 is
    # quantized with them, and each scheme's weights are tuned through their rounding (Coral has no ONNX int8, but
    # its weights are tuned too)
    assert ran.count("calibrate-opset17-gptq-per-channel-auto-per-channel-asym") == 1
    assert ran.count("calibrate-opset17-gptq-per-channel-conv-auto-per-channel-conv-asym") == 1
    # different int8 schemes give different weights and conversions; the int8 kind converts the tuned weights
    assert ran.count("weights-opset17-gptq-per-channel") == ran.count("weights-opset17-gptq-per-channel-conv") == 1
    assert ran.count("weights-opset17-tuned-per-channel") == ran.count("weights-opset17-tuned-per-channel-conv") == 1
    # the float files do not depend on the int8 scheme: one conversion for both boards
    assert ran.count("convert-opset17-NHWC-float") == 1
    # Coral's int8 model goes to the Edge TPU compiler, which refuses grouped convolutions (CONV_2D v6): converted
    # without them where the model has any, which this one has not
    assert "convert-opset17-tuned-per-channel-conv-per-channel-conv-uint8-NHWC-auto" in ran
    assert (run.out / "pipeline.yaml").is_file()


def test_second_run_skips_everything_and_from_reruns_later_stages(tiny_run, small_config):
    run, _ = tiny_run
    lines: list[str] = []
    Run(small_config(run.out, targets="raspberry-pi-4,coral-edgetpu"), log=lines.append).execute()
    assert lines and all(line.startswith("[skip]") for line in lines)
    lines.clear()
    Run(small_config(run.out, targets="raspberry-pi-4", from_stage="bench"), log=lines.append).execute()
    ran = [line.split()[-1] for line in lines if line.startswith("[run ]")]
    assert ran == ["raspberry-pi-4/bench", "raspberry-pi-4/report"]
    assert any(line.strip().startswith("bench [") for line in lines)  # the benchmark's progress


@pytest.mark.slow
def test_changed_calibration_reruns_only_what_depends_on_it(tmp_path, small_config):
    lines: list[str] = []
    stages = ["model", "export", "quantize", "convert"]
    first = {"num_samples": 128, "method": "minmax"}
    Run(small_config(tmp_path, targets="raspberry-pi-4", calibration=first), log=lines.append).execute(stages)
    lines.clear()
    # Another method: new ranges, weights tuned through their rounding and a new ONNX int8 model, the same samples
    # and GPTQ weights; the float TFLite conversion is kept, the int8 one (of the tuned weights, with the new
    # ranges) is made again.
    Run(small_config(tmp_path, targets="raspberry-pi-4", calibration={"num_samples": 128, "method": "percentile"}),
        log=lines.append).execute(stages)
    assert [line.split(":")[0] for line in lines] == [
        "[skip] model", "[skip] export-opset17", "[skip] calibration-samples", "[skip] weights-opset17-gptq-per-channel",
        "[run ] calibrate-opset17-gptq-per-channel-percentile",
        "[run ] weights-opset17-tuned-per-channel",
        "[run ] quantize-opset17-tuned-per-channel-percentile-per-channel-asym-tol1",
        "[skip] convert-opset17-NHWC-float",
        "[run ] convert-opset17-tuned-per-channel-per-channel-float32-NHWC-percentile-tol1"]
    lines.clear()
    # Other samples: everything made from them again, the weights chosen and tuned on them too.
    Run(small_config(tmp_path, targets="raspberry-pi-4", calibration={"num_samples": 32, "method": "percentile"}),
        log=lines.append).execute(["model", "export", "quantize"])
    assert lines == ["[skip] model: inputs unchanged", "[skip] export-opset17: inputs unchanged",
                     "[run ] calibration-samples", "[run ] weights-opset17-gptq-per-channel",
                     "[run ] calibrate-opset17-gptq-per-channel-percentile",
                     "[run ] weights-opset17-tuned-per-channel",
                     "[run ] quantize-opset17-tuned-per-channel-percentile-per-channel-asym-tol1"]


@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path, small_config, monkeypatch):
    import pipeline.formats.tflite as convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "convert_tflite", interrupted)
    # min/max ranges and nearest rounding: one conversion (of the export) makes every TFLite file
    config = small_config(tmp_path, targets="coral-edgetpu", eval_samples=100, bench={"runs": 10, "warmup": 1},
                          calibration={"num_samples": 128, "method": "minmax", "weight_rounding": "nearest"})
    conversion = "convert-opset17-per-channel-conv-uint8-NHWC-minmax"
    with pytest.raises(KeyboardInterrupt):
        Run(config).execute()
    assert not list((tmp_path / "shared").glob(".*partial")) and not (tmp_path / "shared" / conversion).exists()
    monkeypatch.undo()
    lines: list[str] = []
    Run(config, log=lines.append).execute()
    assert lines[:3] == ["[skip] model: inputs unchanged", "[skip] export-opset17: inputs unchanged",
                         "[skip] calibration-samples: inputs unchanged"]
    assert f"[run ] {conversion}" in lines
    assert (tmp_path / "coral-edgetpu" / "report.md").is_file()


def _cli(*args):
    return ["--model", "fmnist-tiny", "--epochs", "4", "--train-subset", "10000", "--calibration-samples", "128",
            "--eval-samples", "400", "--bench-runs", "10", "--no-compress", *args]


@pytest.mark.slow
def test_stage_commands_run_alone_on_the_previous_output(tmp_path, capsys):
    from pipeline.targets import TARGETS_DIR

    # A user profile: the Jetson Nano's, with a tolerance for a weak test model whose symmetric int8
    # activations (TensorRT's scheme) cost it 1-2 points.
    profile = tmp_path / "my-jetson.yaml"
    profile.write_text((TARGETS_DIR / "jetson-nano.yaml").read_text()
                       .replace("name: jetson-nano", "name: my-jetson").replace("accuracy_tolerance: 1.0", "accuracy_tolerance: 5"))
    out = str(tmp_path / "run")
    assert main(["evaluate", "--out", out, "--target", str(profile)]) == 7
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stage 'model' has no up-to-date output" in err and "run 'pipeline export'" in err
    with pytest.raises(SystemExit) as refused:  # a flag of another stage is refused, not silently saved
        main(["evaluate", "--out", out, "--target", str(profile), "--epochs", "4"])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and "\n" not in err and "--epochs does not apply to 'pipeline evaluate' (it sets " \
        "train.epochs; run, compress, export take it)" in err, err
    assert main(["export", "--out", out, "--target", str(profile), "--model", "fmnist-tiny", "--epochs", "4",
                 "--train-subset", "10000", "--no-compress"]) == 0
    assert (tmp_path / "run" / "shared" / "export-opset13" / "model.onnx").is_file()
    # later stage commands read the run's saved configuration: each takes its own options only
    for stage, own in (("quantize", ["--calibration-samples", "128"]), ("evaluate", ["--eval-samples", "400"]),
                       ("bench", ["--bench-runs", "10"]), ("report", []), ("bundle", [])):
        assert main([stage, "--out", out, *own]) == 0, stage
    assert (tmp_path / "run" / "my-jetson" / "bundle" / "artifacts" / "onnx-fp16.onnx").is_file()
    assert "my-jetson/report.md" in capsys.readouterr().out


def test_config_file_with_flag_override(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("targets: coral-edgetpu\nmodel: fmnist-tiny\ntrain: {epochs: 1, train_subset: 2000}\n"
                      "calibration: {num_samples: 16}\neval_samples: 50\nbench: {runs: 5, warmup: 1}\n"
                      "compress: {enabled: false}\n")
    out = tmp_path / "run"
    assert main(["export", "--config", str(config), "--out", str(out), "--train-subset", "1000"]) == 0
    import yaml

    effective = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert effective["targets"] == ["coral-edgetpu"] and effective["train"] == {**effective["train"], "epochs": 1,
                                                                                "train_subset": 1000}
    assert effective["calibration"]["num_samples"] == 16
    assert effective["out"] == str(out)


@pytest.mark.parametrize("args, code, message", [
    (["--target", "raspbery-pi-4"], 2, "unknown target 'raspbery-pi-4' (did you mean 'raspberry-pi-4'?)"),
    (["--data", "/nonexistent/data"], 3, "/nonexistent/data: dataset not found"),
    (["--model", "tests.helpers:rgb_net"], 4, "does not accept input of shape [1, 1, 28, 28]"),
    (["--model", "tests.helpers:fft_net", "--preprocess", "dataset"], 5, "ONNX export at opset 17 failed"),
])
def test_bad_input_is_one_line_with_no_half_written_artifact(tmp_path, capsys, args, code, message):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *_cli(), *args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    leftovers = [p for p in out.rglob("*") if ".partial" in p.name or p.suffix in (".onnx", ".tflite")]
    assert not leftovers


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("trian: {epochs: 1}\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "unknown field 'trian' (did you mean 'train'?)" in capsys.readouterr().err


def test_accuracy_gate_names_the_artifact(tmp_path, small_config):
    from pipeline.stages.evaluate import accuracy_gate, gate_message

    rows = [{"kind": "torch-fp32", "drop": 0.0, "top1": 90.0}, {"kind": "tflite-int8", "drop": 2.5, "top1": 87.5}]
    gate = accuracy_gate(rows, 1.0, "torch-fp32")
    assert not gate["passed"] and gate_message(gate, "pi").startswith(
        "pi: tflite-int8 drops 2.50 points (top-1 87.50%); the profile allows 1 points below")
    assert accuracy_gate(rows, 3.0, "torch-fp32")["passed"]


def test_int8_vs_float_benchmark_prints_ratios(tiny_run, tmp_path):
    run, _ = tiny_run
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_vs_float.py"
    done = subprocess.run([sys.executable, str(script), str(run.out / "coral-edgetpu"), "--rounds", "1", "--runs", "20",
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "tflite-int8" in done.stdout and "1.00x" in done.stdout
    assert set(json.loads((tmp_path / "r.json").read_text())["p50_ms"]) == {"torch-fp32", "tflite-fp32", "tflite-int8"}


@pytest.mark.slow
def test_boards_with_symmetric_and_asymmetric_int8_each_get_their_tuned_weights(tmp_path, small_config):
    """A Pi (asymmetric int8 activations) beside a Jetson (TensorRT's symmetric ones): the weights are tuned through
    each board's own rounding, in two steps (they once shared one id, and the run stopped there)."""
    lines: list[str] = []
    Run(small_config(tmp_path, targets="raspberry-pi-4,jetson-orin-nano", calibration={"num_samples": 16,
                     "method": "minmax", "tuning_steps": 4}), log=lines.append).execute(["model", "export", "quantize"])
    ran = [line.split()[-1] for line in lines if line.startswith("[run ]")]
    assert "weights-opset17-tuned-per-channel" in ran and "weights-opset17-tuned-per-channel-sym" in ran, ran
