"""Benchmark results: repeats and their spread, the conditions recorded, estimates kept apart, merged reports."""
import json
import subprocess
import sys

from board_runtime.measure import aggregate
from board_runtime.schemas import SUITE_SCHEMA
from pipeline.cli import main
from pipeline.stages.compare import COMPARE_SCHEMA


def _repeat(p50: float) -> dict:
    return {"artifact": "tflite-int8", "runs": 10, "latency_ms": {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.5},
            "load_ms": 5.0, "first_inference_ms": 1.0, "throughput_per_s": 1e3 / p50, "peak_rss_mb": 50.0,
            "rss_growth_mb": 10.0, "system": {"temperature_c": {"cpu": 50.0}}}


def test_median_of_medians_and_noise_flag():
    steady = aggregate([_repeat(1.0), _repeat(1.02), _repeat(0.99)], noise_threshold=0.1)
    assert steady["median_of_medians_ms"] == steady["latency_ms"]["p50"] == 1.0
    assert abs(steady["spread"] - 0.03) < 1e-9 and steady["noisy"] is False
    assert steady["runs"] == 30 and [r["conditions"] for r in steady["repeats"]] == [{"temperature_c": {"cpu": 50.0}}] * 3
    throttled = aggregate([_repeat(1.0), _repeat(1.6), _repeat(1.1)], noise_threshold=0.1)
    assert throttled["latency_ms"]["p50"] == 1.1 and throttled["noisy"] is True
    single = aggregate([_repeat(1.0)], noise_threshold=0.1)
    assert single["spread"] is None and single["noisy"] is None


def test_runner_benchmarks_a_bundle_with_repeats_in_fresh_processes(tiny_run, tmp_path):
    run, _ = tiny_run
    bundle = run.out / "coral-edgetpu" / "bundle"
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, str(bundle / "run_model.py"), "bench-all", "--runs", "20", "--warmup", "2",
                           "--repeats", "2", "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    suite = json.loads(out.read_text())
    assert suite["schema"] == SUITE_SCHEMA and suite["repeats"] == 2
    assert [r["artifact"] for r in suite["results"]] == ["tflite-fp32", "tflite-int8"]
    for result in suite["results"]:
        assert len(result["repeats"]) == 2 and result["runs"] == 40 and result["runtime"] == "litert"
        assert result["latency_ms"]["p50"] == sorted(r["p50"] for r in result["repeats"])[0] + (
            abs(result["repeats"][0]["p50"] - result["repeats"][1]["p50"]) / 2)
        assert result["peak_rss_mb"] >= result["rss_growth_mb"] > 0 and result["throughput_per_s"] > 0
    assert {"cpu", "cores", "machine", "python"} <= set(suite["system"])
    assert "[2/2] tflite-int8: repeat 2/2" in done.stderr  # progress


def test_report_records_conditions_and_keeps_estimates_apart(tiny_run):
    run, _ = tiny_run
    pi = run.out / "raspberry-pi-4"
    data = json.loads((pi / "report.json").read_text())
    assert data["measured_on"]["kind"] == "local" and data["bench"]["repeats"] == 2
    assert all(len(r["repeats"]) == 2 and r["spread"] is not None for r in data["rows"])
    estimates = {e["kind"]: e for e in data["estimates"]}
    assert set(estimates) == {r["kind"] for r in data["rows"]} - {"torch-fp32"}
    assert all(e["method"] == "roofline (estimated)" and e["latency_ms"] > 0 for e in estimates.values())
    assert estimates["tflite-int8"]["latency_ms"] < estimates["tflite-fp32"]["latency_ms"]
    md = (pi / "report.md").read_text()
    measured, estimated = md.split("## Estimated on the board (roofline, not measured)")
    assert "| tflite-int8 | litert" in measured and "| tflite-int8 | int8 |" in estimated
    assert "raspberrypi.com" in estimated  # the board figures' source
    assert "**Conditions:** governor" in md and "median of 2 repeats" in md and "not on the board itself" in md


def test_compare_merges_boards_into_one_table(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert main(["report", "--compare", str(run.out), "--out", str(tmp_path / "cmp")]) == 0
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["schema"] == COMPARE_SCHEMA
    pairs = {(r["board"], r["artifact"]) for r in data["measured"]}
    assert ("raspberry-pi-4", "tflite-int8") in pairs and ("coral-edgetpu", "tflite-int8") in pairs
    assert len(pairs) == len(data["measured"]) == 6 + 3  # torch-fp32 + 5 for the Pi, torch + 2 for the Coral
    assert {e["board"] for e in data["estimated"]} == {"raspberry-pi-4", "coral-edgetpu"}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    flops = json.loads((run.out / "raspberry-pi-4" / "report.json").read_text())["model"]["flops"]
    model = f"fmnist-tiny, {flops / 1e6:.1f} MFLOPs"  # which model each row measured
    assert {r["model"] for r in data["measured"]} == {e["model"] for e in data["estimated"]} == {model}
    assert md.index("## Measured") < md.index("## Estimated") and f"| coral-edgetpu | {model} | local host:" in md
    assert "data:image/png;base64," in (tmp_path / "cmp" / "compare.html").read_text()
    assert main(["report", "--compare", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing-here: no report.json there" in err
