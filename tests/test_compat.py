"""The boards' toolchains, predicted from real converted files: the Edge TPU compiler's placement and split, TensorRT's
parser and Q/DQ rules, LiteRT's XNNPACK partitions; the bundles carry the report and the board scripts."""
import json
import os
import subprocess

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from calibration import CalibrationMethod, CalibrationOptions, calibrate
from pipeline.compat import TOOLCHAINS
from pipeline.compat.tensorrt import engines_script, qdq_problems
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.errors import ConfigError
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.formats.onnx_int8 import quantize_int8
from pipeline.formats.tflite import convert_tflite
from pipeline.nets import fmnist_tiny
from pipeline.profile import IODtype, Layout
from pipeline.targets import load_target
from pipeline.tflite_file import read_graph


def hardswish_net() -> nn.Module:
    """Conv, hard-swish (MobileNetV3's activation, which the Edge TPU lacks), then more Edge TPU ops."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


@pytest.fixture(scope="module")
def hardswish_tflite(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hswish")
    images = np.random.default_rng(0).random((32, 16, 16, 3)).astype(np.float32)
    export_onnx(hardswish_net().eval(), (1, 3, 16, 16), out / "hswish.onnx", 17)
    return convert_tflite(out / "hswish.onnx", PreprocessSpec.from_images(images).apply(images), images, out / "tfl",
                          "per-tensor", IODtype.UINT8, Layout.NHWC, grouped_conv=False)


def test_edgetpu_names_the_op_it_lacks_and_where_the_graph_splits(hardswish_tflite):
    coral = load_target("coral-edgetpu")
    result = TOOLCHAINS["edgetpu-compiler"].check(hardswish_tflite["int8"], "tflite-int8", coral)
    names = [op.op.split()[0] for op in result.ops]
    assert "HARD_SWISH" in names, names
    split = names.index("HARD_SWISH")
    lacking = result.ops[split]
    assert lacking.runs_on == "CPU" and lacking.why.startswith("not an Edge TPU op; from here on") and \
        "ReLU6" in lacking.change and "leave it there" not in lacking.change
    share = float(lacking.why.split(" ops and ")[1].split("%")[0])
    assert 50 < share < 100, lacking.why  # the early hard-swish leaves most of the convolutions on the CPU
    assert all(op.runs_on == "accelerator" for op in result.ops[:split]) and split > 0
    after = result.ops[split + 1:]
    assert after and all(op.runs_on == "CPU" and op.why.startswith(f"after op {split} (HARD_SWISH)") for op in after)
    assert result.verdict.startswith(f"{split} of {len(names)} ops on the Edge TPU") and "HARD_SWISH" in result.verdict
    assert not result.problems, "uint8 I/O, static shapes: nothing else to say"
    # The float file is all float: the Edge TPU maps none of it, for that reason.
    float_result = TOOLCHAINS["edgetpu-compiler"].check(hardswish_tflite["fp32"], "tflite-fp32", coral)
    assert float_result.ops[0].runs_on == "CPU" and "8-bit integers only" in float_result.ops[0].why
    assert any("float32, the profile's I/O type is uint8" in p for p in float_result.problems)


def test_an_unsupported_op_after_the_last_layer_leaves_a_sliver_of_the_work_on_the_cpu(tmp_path):
    """As a YOLO head's DFL softmax does: what splits off after the network's last large layer is a negligible share
    of its multiply-adds, and the pre-flight says so rather than only 'change that layer'."""
    torch.manual_seed(0)
    # a softmax over the channels of a 4-D map, then a 1 x 1 convolution: YOLOv8's DFL on the box bins
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.Softmax(dim=1), nn.Conv2d(32, 1, 1)).eval()
    images = np.random.default_rng(3).random((16, 16, 16, 3)).astype(np.float32)
    export_onnx(model, (1, 3, 16, 16), tmp_path / "tail.onnx", 17)
    files = convert_tflite(tmp_path / "tail.onnx", PreprocessSpec.from_images(images).apply(images), images,
                           tmp_path / "tfl", "per-tensor", IODtype.UINT8, Layout.NHWC, grouped_conv=False)
    result = TOOLCHAINS["edgetpu-compiler"].check(files["int8"], "tflite-int8", load_target("coral-edgetpu"))
    first = result.ops[result.facts["first_cpu_op"]]
    assert first.op.startswith("SOFTMAX") and "is not one-dimensional; from here on, " in first.why, first
    share = float(first.why.split(" ops and ")[1].split("%")[0])
    assert 0 < share < 1 and first.change.endswith(f"or leave it there: the Edge TPU segment already holds "
                                                   f"{100 - share:.2f}% of the multiply-adds"), first


def test_xnnpack_partitions_come_from_litert_itself(hardswish_tflite):
    result = TOOLCHAINS["cpu"].check(hardswish_tflite["fp32"], "tflite-fp32", None)
    assert result.device == "CPU (XNNPACK)" and result.verdict.startswith("all ")
    assert len(result.ops) == len(read_graph(hardswish_tflite["fp32"]).ops)


def test_only_a_grouped_conv_needs_its_own_coral_conversion(tmp_path):
    """A model with neither grouped convolutions nor ones of groups > 1 per channel makes one TFLite conversion for
    Coral's float and int8 files: a depthwise convolution (one group per channel) is not a grouped one."""
    from pipeline.onnxmodel import has_grouped_conv

    for name, groups, grouped in (("plain", 1, False), ("depthwise", 16, False), ("grouped", 4, True)):
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, padding=1, groups=groups)).eval()
        export_onnx(model, (1, 3, 12, 12), tmp_path / f"{name}.onnx", 17)
        assert has_grouped_conv(tmp_path / f"{name}.onnx") is grouped, name


@pytest.mark.slow
def test_a_grouped_conv_is_refused_by_compiler_16(tmp_path):
    """TensorFlow writes a grouped convolution as CONV_2D version 6, which compiler 16 cannot parse (google-coral/
    edgetpu#631); converted without grouped convolutions, the same model maps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    images = np.random.default_rng(1).random((24, 12, 12, 3)).astype(np.float32)
    inputs = PreprocessSpec.from_images(images).apply(images)
    export_onnx(model, (1, 3, 12, 12), tmp_path / "grouped.onnx", 17)
    coral = load_target("coral-edgetpu")
    grouped = convert_tflite(tmp_path / "grouped.onnx", inputs, images, tmp_path / "a", "per-tensor", IODtype.UINT8,
                             Layout.NHWC)
    result = TOOLCHAINS["edgetpu-compiler"].check(grouped["int8"], "tflite-int8", coral)
    assert result.refused and "CONV_2D" in result.verdict and "grouped convolution" in result.verdict
    split = convert_tflite(tmp_path / "grouped.onnx", inputs, images, tmp_path / "b", "per-tensor", IODtype.UINT8,
                           Layout.NHWC, grouped_conv=False)
    assert TOOLCHAINS["edgetpu-compiler"].check(split["int8"], "tflite-int8", coral).verdict.startswith("all ")


@pytest.mark.slow
def test_float_io_conversions_stay_at_the_edges_without_splitting(tmp_path):
    """The TFLite converter's default int8 model takes and gives float: its first QUANTIZE and last DEQUANTIZE run
    on the CPU, and everything between still maps (the compiler does not split there)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    images = np.random.default_rng(2).random((24, 12, 12, 3)).astype(np.float32)
    export_onnx(model, (1, 3, 12, 12), tmp_path / "plain.onnx", 17)
    files = convert_tflite(tmp_path / "plain.onnx", PreprocessSpec.from_images(images).apply(images), images,
                           tmp_path / "tfl", "per-tensor", IODtype.FLOAT32, Layout.NHWC, grouped_conv=False)
    result = TOOLCHAINS["edgetpu-compiler"].check(files["int8"], "tflite-int8", load_target("coral-edgetpu"))
    on_cpu = [op for op in result.ops if op.runs_on != "accelerator"]
    assert [op.op.split()[0] for op in on_cpu] == ["QUANTIZE", "DEQUANTIZE"], on_cpu
    assert on_cpu[0].index == 0 and on_cpu[1].index == len(result.ops) - 1
    assert "float input" in on_cpu[0].why and "float output" in on_cpu[1].why
    assert any("float32, the profile's I/O type is uint8" in p for p in result.problems)


@pytest.fixture(scope="module")
def tiny_ranges(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    export_onnx(fmnist_tiny().eval(), (1, 1, 28, 28), path, 13)
    data = load_dataset(None).train.take(64)
    inputs = PreprocessSpec.from_images(data.read()).apply(data.read())
    return path, calibrate(path, "input", inputs, CalibrationOptions(method=CalibrationMethod.MINMAX,
                                                                     num_samples=len(inputs)))


def test_tensorrt_qdq_conformance(tiny_ranges, tmp_path):
    path, ranges = tiny_ranges
    orin, nano, pi = (load_target(t) for t in ("jetson-orin-nano", "jetson-nano", "raspberry-pi-4"))
    jetson = tmp_path / "jetson.onnx"
    quantize_int8(path, ranges, jetson, orin.int8, quantized_bias=False)  # as the pipeline does for TensorRT
    assert qdq_problems(onnx.load(str(jetson))) == {}
    result = TOOLCHAINS["tensorrt"].check(jetson, "onnx-int8", orin)
    assert result.verdict.startswith("all ") and result.facts["qdq_conforming"]
    # The same file on a Jetson Nano: its Maxwell GPU has no int8, so TensorRT builds no Q/DQ network there.
    nano_result = TOOLCHAINS["tensorrt"].check(jetson, "onnx-int8", nano)
    assert nano_result.refused and "require hardware with Int8 support" in nano_result.verdict
    # Asymmetric uint8 activations (the Raspberry Pi's scheme) and int32 biases do not conform.
    asymmetric = tmp_path / "asym.onnx"
    quantize_int8(path, ranges, asymmetric, pi.int8)
    whys = {why for why, _ in qdq_problems(onnx.load(str(asymmetric))).values()}
    assert any("UINT8" in w for w in whys) and any("INT32" in w for w in whys)
    assert TOOLCHAINS["tensorrt"].check(asymmetric, "onnx-int8", orin).refused


def test_tensorrt_parser_tables_and_the_opset_cap(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(1, 2), nn.LayerNorm(26), nn.Hardswish()).eval()
    export_onnx(model, (1, 1, 28, 28), tmp_path / "ln.onnx", 17)
    nano, orin = load_target("jetson-nano"), load_target("jetson-orin-nano")
    result = TOOLCHAINS["tensorrt"].check(tmp_path / "ln.onnx", "onnx-fp32", nano)
    refused = {op.op: op for op in result.ops if op.runs_on == "refused"}
    assert {"LayerNormalization", "HardSwish"} <= set(refused)
    assert refused["HardSwish"].change.startswith("export at opset 13 or lower")
    assert any(p.startswith("opset 17: TensorRT 8.2's parser supports operators up to opset 13") for p in result.problems)
    assert not TOOLCHAINS["tensorrt"].check(tmp_path / "ln.onnx", "onnx-fp32", orin).refused
    # A profile asking TensorRT 8.2 for opset 17 is refused at load, naming the file and the field.
    text = (load_target("jetson-nano").source).read_text().replace("onnx_opset: 13", "onnx_opset: 17")
    (tmp_path / "nano17.yaml").write_text(text.replace("name: jetson-nano", "name: nano17"))
    with pytest.raises(ConfigError, match=r"nano17.yaml: field 'onnx_opset': bad value 17, expected at most 13, the "
                                          r"highest opset the board's tensorrt 8.2 parses"):
        load_target(str(tmp_path / "nano17.yaml"))
    (tmp_path / "bad.yaml").write_text(text.replace('version: "8.2"', 'version: "7.1"'))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'toolchain.version': bad value '7.1', expected one of "
                                          r"8.2, 8.5, 8.6, 10.3"):
        load_target(str(tmp_path / "bad.yaml"))


def test_engine_script_is_valid_shell_and_skips_int8_without_int8_hardware(tmp_path):
    artifacts = {"onnx-fp32": "artifacts/onnx-fp32.onnx", "onnx-int8": "artifacts/onnx-int8.onnx"}
    for int8 in (True, False):
        script = tmp_path / f"build_{int8}.sh"
        script.write_text(engines_script(artifacts, int8))
        subprocess.run(["sh", "-n", str(script)], check=True)
        text = script.read_text()
        assert "build artifacts/onnx-fp32.onnx onnx-fp32.fp16 --fp16" in text
        assert ("build artifacts/onnx-int8.onnx onnx-int8.int8 --int8 --fp16" in text) is int8
    # Without trtexec the script stops with a clear message, not a shell error.
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": str(tmp_path / "none")})
    assert done.returncode == 2 and "trtexec not found" in done.stderr


def test_coral_bundle_is_full_integer_with_its_report_and_scripts(tiny_run):
    run, _ = tiny_run
    bundle = run.out / "coral-edgetpu" / "bundle"
    graph = read_graph(bundle / "artifacts" / "tflite-int8.tflite")
    assert [t.dtype for t in (*graph.inputs, *graph.outputs)] == ["UINT8", "UINT8"]
    assert "TRANSPOSE" not in {op.name for op in graph.ops}
    assert all(t.dtype in ("INT8", "UINT8") or (t.constant and t.dtype == "INT32")
               for op in graph.ops for t in (*op.inputs, *op.outputs))
    compat = json.loads((bundle / "compatibility.json").read_text())["artifacts"]
    int8 = next(r for r in compat if r["kind"] == "tflite-int8")
    assert int8["toolchain"] == "Edge TPU compiler 16" and int8["verdict"].startswith("all ")
    assert json.loads((bundle / "manifest.json").read_text())["compatibility"]["tflite-int8"] == int8["verdict"]
    for script in ("compile_edgetpu.sh", "setup.sh"):
        assert os.access(bundle / script, os.X_OK)
        subprocess.run(["sh", "-n", str(bundle / script)], check=True)
    assert "edgetpu_compiler --out_dir artifacts" in (bundle / "compile_edgetpu.sh").read_text()
    report = json.loads((run.out / "coral-edgetpu" / "report.json").read_text())
    assert [r["kind"] for r in report["compatibility"]] == ["tflite-fp32", "tflite-int8"]
    assert "## Compatibility: tflite-int8 with the Edge TPU compiler 16" in (run.out / "coral-edgetpu" /
                                                                           "report.md").read_text()
