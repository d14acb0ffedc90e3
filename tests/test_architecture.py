"""The shape of the code: the format registry walked kind by kind, one registration adds a kind, step ids are
the steps' only identity, the on-board runtime stands alone, and the CLI's light commands stay light."""
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from board_runtime.imaging import to_input
from board_runtime.model import Model, find_artifact
from pipeline.config import STAGES
from pipeline.data import load_dataset
from pipeline.engine import Engine, Step
from pipeline.formats import FORMATS, Format, register_format
from pipeline.formats.registry import float_io
from pipeline.orchestrator import Run
from pipeline.planner import Planner
from pipeline.targets import TARGETS_DIR, load_target

REPO = Path(__file__).resolve().parents[1]
UP_TO_BUNDLE = STAGES[: STAGES.index("bundle") + 1]
ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def _session_input(model: Model) -> tuple[list[int], str]:
    """The input shape and dtype as the runtime itself reports them after loading the file."""
    session = model.session
    if model.artifact["session"] == "tflite":
        return [int(d) for d in session.input["shape"]], np.dtype(session.input["dtype"]).name
    if model.artifact["session"] == "onnx":
        first = session.session.get_inputs()[0]
        return list(first.shape), ONNX_TYPES[first.type]
    return list(model.artifact["input_shape"]), "float32"  # TorchScript: no declared input


def test_every_format_builds_and_round_trips_through_the_runtime(tiny_run, tmp_path, small_config):
    """The host profile lists every registered kind; each is built on the tiny model, then loaded by the on-board
    runtime from the manifest, fed as the manifest says and compared with the reference."""
    run, _ = tiny_run
    host = load_target("host")
    assert set(FORMATS) == {*host.artifacts, "torch-fp32"}, "the host profile must list every artifact kind"
    out = tmp_path / "run"
    shutil.copytree(run.out, out)  # the shared steps are already built; the session's run stays untouched
    Run(small_config(out, targets="host")).execute(UP_TO_BUNDLE)
    manifest = json.loads((out / "host" / "artifacts.json").read_text())
    assert [a["kind"] for a in manifest["artifacts"]] == list(FORMATS)  # the reference first, then registry order
    x = to_input(load_dataset(None).test.read()[:20], manifest["preprocess"])  # as the board normalises raw images
    outputs = {}
    for artifact in manifest["artifacts"]:
        row = FORMATS[artifact["kind"]]
        assert (artifact["format"], artifact["precision"], artifact["session"]) == (row.format, row.precision, row.session)
        model = Model(artifact, out / "host", threads=1)
        shape, dtype = _session_input(model)
        assert shape == artifact["input_shape"] and dtype == artifact["input_dtype"], artifact["kind"]
        layout_channels = shape[-1] if artifact["input_layout"] == "NHWC" else shape[1]
        assert layout_channels == 1, artifact["kind"]
        assert model.session.accelerators == []
        outputs[artifact["kind"]] = np.concatenate([model.predict(sample[None]) for sample in x])
    reference = outputs["torch-fp32"].argmax(1)
    for kind, logits in outputs.items():
        assert logits.shape == (20, 10) and (logits.argmax(1) == reference).mean() >= 0.9, kind
    bundle = json.loads((out / "host" / "bundle" / "manifest.json").read_text())
    assert [a["kind"] for a in bundle["artifacts"]] == [k for k in FORMATS if FORMATS[k].deployable]


@pytest.fixture
def dummy_kind():
    """An artifact kind of a test's own: a copy of the ONNX fp32 model, registered and nothing else."""

    def build(plan, target):
        export, key = plan.build("onnx-fp32", target)

        def produce(tmp: Path) -> dict:
            shutil.copyfile(plan.path(export, key), tmp / "copy.onnx")
            return {"files": {"onnx": "copy.onnx"}}

        return plan.shared_step("dummy-copy", "quantize", {}, [export], produce), "onnx"

    register_format(Format(kind="onnx-copy", format="onnx", precision="fp32", label="ONNX copy", stage="quantize",
                           session="onnx", runtimes=("onnxruntime",), build=build, io=float_io))
    try:
        yield "onnx-copy"
    finally:
        FORMATS.remove("onnx-copy")


def _host_profile(tmp_path: Path, name: str, kinds: list[str]) -> Path:
    """The host profile under another name, building only ``kinds``."""
    text = (TARGETS_DIR / "host.yaml").read_text().replace("name: host", f"name: {name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("artifacts: [onnx-fp32, onnx-fp16, onnx-int8, tflite-fp32, tflite-fp16, tflite-int8]",
                                 f"artifacts: [{', '.join(kinds)}]"))
    return path


def test_a_new_kind_is_one_registration(dummy_kind, tmp_path, small_config):
    profile = _host_profile(tmp_path, "copy-board", ["onnx-fp32", dummy_kind])
    out = tmp_path / "run"
    Run(small_config(out, targets=str(profile), bench={"runs": 5, "warmup": 1, "repeats": 1})).execute()
    report = json.loads((out / "copy-board" / "report.json").read_text())
    rows = {r["kind"]: r for r in report["rows"]}
    assert list(rows) == ["torch-fp32", "onnx-fp32", dummy_kind] and rows[dummy_kind]["label"] == "ONNX copy"
    assert rows[dummy_kind]["agreement"] == 100.0 and rows[dummy_kind]["latency_ms"]["p50"] > 0
    assert f"| {dummy_kind} |" in (out / "copy-board" / "report.md").read_text()
    Run(small_config(out, targets=str(profile))).execute(["bundle"])
    manifest = json.loads((out / "copy-board" / "bundle" / "manifest.json").read_text())
    assert find_artifact(manifest, dummy_kind)["session"] == "onnx"


def test_one_step_id_means_one_step(tmp_path):
    lines: list[str] = []
    plan = Planner(None, Engine(tmp_path, log=lines.append), [])

    def produce(tmp: Path) -> dict:
        (tmp / "ranges.json").write_text("{}")
        return {"files": {"ranges": "ranges.json"}}

    step = lambda method: Step("calibrate-x", "quantize", {"method": method}, [], tmp_path / "x", produce)  # noqa: E731
    first = plan.run(step("minmax"))
    assert plan.run(step("minmax")) is first and lines == ["[run ] calibrate-x"]  # built once per run
    with pytest.raises(RuntimeError, match="two different steps share the id 'calibrate-x'"):
        plan.run(step("entropy"))


def test_every_registry_is_one_registry():
    """Formats, sources, built-in networks, toolchains, decoders and sessions: each a ``Registry``, filled, refusing
    a second row of a name, and naming the close one for a misspelt name."""
    import board_runtime.detection  # noqa: F401  (the decoders' rows)
    import board_runtime.sessions  # noqa: F401
    import pipeline.nets  # noqa: F401
    import pipeline.sources  # noqa: F401
    from board_runtime.registry import REGISTRIES

    held = {r.what: r for r in REGISTRIES}
    assert {"artifact kind", "model source", "built-in model", "toolchain", "decoder", "session"} <= set(held)
    for what, registry in held.items():
        name, row = next(iter(registry.items()))
        with pytest.raises(ValueError, match=f"{what} '{name}' is registered twice"):
            registry.register(name, row)
        with pytest.raises(Exception, match=f"unknown {what} '{name[:-1]}' \\(did you mean '{name}'\\?\\); valid: "):
            registry.find(name[:-1])
        assert registry.find(name) is row


def test_each_step_record_has_its_own_peak_memory(tmp_path):
    engine = Engine(tmp_path, log=lambda line: None)

    def produce(megabytes: int):
        def make(tmp: Path) -> dict:
            block = np.ones(megabytes * 2**20, np.uint8)  # written, so resident
            (tmp / "sum.txt").write_text(str(int(block.sum())))
            return {"files": {"sum": "sum.txt"}}
        return make

    big = engine.run(Step("big", "model", {}, [], tmp_path / "big", produce(400)))
    small = engine.run(Step("small", "model", {}, [], tmp_path / "small", produce(8)))
    if sys.platform.startswith("linux"):
        assert big["peak_rss_mb"] >= small["peak_rss_mb"] + 350, (big, small)  # the big step's peak is not kept


def test_report_names_the_calibrator_of_each_int8_artifact(tiny_run):
    run, _ = tiny_run
    report = json.loads((run.out / "raspberry-pi-4" / "report.json").read_text())
    assert report["reference"] == {"kind": "torch-fp32", "label": "PyTorch fp32"}
    calibration = report["calibration"]
    assert set(calibration) == {"onnx-int8", "tflite-int8"}
    weights = calibration["onnx-int8"].partition("; ")[2]
    assert re.fullmatch(r"weights chosen by GPTQ rounding with bias correction, then quantization-aware tuning "
                        r"\((-?[\d.]+ -> -?[\d.]+ dB on 32 held-out samples, step \d+ of 80|not kept: no gain over "
                        r"-?[\d.]+ dB on 32 held-out samples in 80 steps)\) on 128 samples, kept bit-exactly in 8/8 layers",
                        weights), weights
    assert " ranges from ONNX Runtime's calibrator on 96 samples, chosen by " in calibration["onnx-int8"]
    ranges = calibration["onnx-int8"].partition(" ranges from ")[0]
    assert re.fullmatch(re.escape(ranges) + r" ranges of the calibration step \(as onnx-int8\) on (\d+) of the \1 "
                        r"tensors the TensorFlow Lite converter quantizes, its own calibration on the same 128 samples "
                        r"on the others; " + re.escape(weights), calibration["tflite-int8"]), calibration["tflite-int8"]
    assert f"tflite-int8: {calibration['tflite-int8']}" in (run.out / "raspberry-pi-4" / "report.md").read_text()


def test_an_uncompiled_int8_tflite_never_gets_the_edge_tpu(tiny_run):
    """Coral's int8 TFLite runs on the CPU and says so; only a model edgetpu_compiler made may ask for the TPU."""
    run, _ = tiny_run
    bundle = run.out / "coral-edgetpu" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    int8 = find_artifact(manifest, "tflite-int8")
    assert int8["session"] == "tflite" and Model(int8, bundle, 1).session.accelerators == []
    suite = json.loads((run.out / "coral-edgetpu" / "bench" / "bench.json").read_text())
    assert all(result["accelerators"] == [] for result in suite["results"])
    report = json.loads((run.out / "coral-edgetpu" / "report.json").read_text())
    assert all("edgetpu" not in row["runtime"] for row in report["rows"])
    with pytest.raises(RuntimeError, match="holds no edgetpu-custom-op: it was not compiled by edgetpu_compiler"):
        Model({**int8, "session": "edgetpu"}, bundle, 1)


@pytest.mark.lint
@pytest.mark.parametrize("package, below", [("board_runtime", ("pipeline", "benchmarks", "calibration")),
                                            ("calibration", ("pipeline", "benchmarks"))])
def test_the_packages_beside_the_pipeline_import_nothing_from_it(package, below):
    """The board runtime ships alone in every bundle; calibration is usable alone (on top of the board runtime's
    measurement): neither reaches into the pipeline, lazily or not."""
    for path in sorted((REPO / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            relative_up = isinstance(node, ast.ImportFrom) and node.level > 1
            assert not relative_up and not any(n.split(".")[0] in below for n in names if n), \
                f"{package}/{path.name} imports {names}"


@pytest.mark.lint
@pytest.mark.parametrize("argv", [["targets", "list"], ["targets", "show", "coral-edgetpu"], ["--help"]])
def test_light_commands_import_neither_torch_nor_tensorflow(argv):
    code = ("import sys\nfrom pipeline.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'onnx2tf'))\n"
            "print('HEAVY', heavy)" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "HEAVY []" in done.stdout, done.stdout[-500:]


@pytest.mark.lint
def test_imports_go_one_way_and_modules_stay_small():
    tool = REPO.parent / "shared" / "tools" / "import_cycles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not beside the checkout")
    done = subprocess.run([sys.executable, str(tool), str(REPO)], capture_output=True, text=True)
    assert "cycle:" not in done.stdout and "imports-benchmarks no" in done.stdout, done.stdout
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines())
             for package in ("pipeline", "board_runtime") for p in (REPO / package).rglob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda item: -item[1])[:3]


@pytest.fixture
def broken_kind():
    """A kind whose model answers wrongly on purpose: the ONNX fp32 model with its classifier's weights negated."""
    import onnx
    from onnx import numpy_helper

    def build(plan, target):
        export, key = plan.build("onnx-fp32", target)

        def produce(tmp: Path) -> dict:
            model = onnx.load(str(plan.path(export, key)))
            gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
            weights = next(t for t in model.graph.initializer if t.name == gemm.input[1])
            weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
            onnx.save(model, str(tmp / "negated.onnx"))
            return {"files": {"onnx": "negated.onnx"}}

        return plan.shared_step("negated", "quantize", {}, [export], produce), "onnx"

    register_format(Format(kind="onnx-negated", format="onnx", precision="fp32", label="ONNX negated",
                           stage="quantize", session="onnx", runtimes=("onnxruntime",), build=build, io=float_io))
    try:
        yield "onnx-negated"
    finally:
        FORMATS.remove("onnx-negated")


def test_a_missed_accuracy_gate_still_writes_the_report_and_a_failing_bundle(broken_kind, tmp_path, capsys):
    from pipeline.cli import main

    profile = _host_profile(tmp_path, "broken-board", ["onnx-fp32", broken_kind])
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--target", str(profile), "--model", "fmnist-tiny", "--epochs", "4",
                 "--train-subset", "10000", "--eval-samples", "200", "--bench-runs", "5", "--bench-repeats", "1",
                 "--no-compress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars: the one-line error
    assert code == 6 and err.startswith("error: broken-board: ") and f"{broken_kind} drops" in err
    assert str(out / "broken-board" / "report.md") in err
    report = json.loads((out / "broken-board" / "report.json").read_text())
    gate = report["accuracy_gate"]
    assert not gate["passed"] and [f["kind"] for f in gate["failing"]] == [broken_kind]
    assert gate["failing"][0]["drop"] > 20 and "export parity" in gate["failing"][0]["advice"]
    assert report["recommendation"]["kind"] == "onnx-fp32"  # the failing artifact is never recommended
    md = (out / "broken-board" / "report.md").read_text()
    assert md.splitlines()[2].startswith(f"**FAILED the accuracy gate:** {broken_kind} drops")
    assert f"- **Accuracy gate:** FAILED: {broken_kind} drops" in md
    manifest = json.loads((out / "broken-board" / "bundle" / "manifest.json").read_text())
    assert manifest["accuracy_gate"]["passed"] is False and find_artifact(manifest, broken_kind)
