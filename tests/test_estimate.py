"""Roofline estimates on a real exported ONNX model, and the validation of a profile's performance section."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from pipeline import load_target
from pipeline.errors import ConfigError
from pipeline.estimate import estimate, estimate_all, model_traffic
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.profile import PeakGops, Performance
from pipeline.targets import TARGETS_DIR
from pipeline.torchmodel import count_flops

INPUT_SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Conv-ReLU-Flatten-Linear net exported to ONNX: (net, path, flops)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    path = tmp_path_factory.mktemp("estimate") / "tiny.onnx"
    export_onnx(net, INPUT_SHAPE, path, opset=17)
    return net, path, count_flops(net, INPUT_SHAPE)


def _performance(fp32=100.0, fp16=None, int8=200.0, bandwidth=10.0) -> Performance:
    return Performance(PeakGops(fp32=fp32, fp16=fp16, int8=int8), memory_bandwidth_gbs=bandwidth, source="test")


def test_parameter_bytes_are_the_torch_parameters(tiny):
    net, path, _ = tiny
    traffic = model_traffic(path)
    assert traffic.parameter_elements == sum(p.numel() for p in net.parameters())
    assert traffic.parameter_bytes == 4 * sum(p.numel() for p in net.parameters())


def test_activation_bytes_by_hand(tiny):
    _, path, _ = tiny
    # input 1x1x8x8, Conv 1x4x8x8, Relu 1x4x8x8, Flatten 1x256, Gemm 1x10: every tensor once, fp32
    elements = 64 + 256 + 256 + 256 + 10
    traffic = model_traffic(path)
    assert traffic.activation_elements == elements
    assert traffic.activation_bytes == 4 * elements


def test_roofline_arithmetic(tiny):
    net, path, flops = tiny
    assert flops == 2 * (4 * 8 * 8 * 9 + 256 * 10)  # a multiply-add is 2 FLOPs
    traffic = model_traffic(path)
    result = estimate("onnx-fp32", flops, traffic, _performance(fp32=100.0, bandwidth=10.0))
    parameters = sum(p.numel() for p in net.parameters())
    assert result.compute_ms == pytest.approx(flops / 100e9 * 1e3)
    assert result.memory_ms == pytest.approx(4 * (parameters + 2 * traffic.activation_elements) / 10e9 * 1e3)
    assert result.latency_ms == max(result.compute_ms, result.memory_ms)
    assert (result.precision, result.method, result.peak_gops, result.bandwidth_gbs) == (
        "fp32", "roofline (estimated)", 100.0, 10.0)


def test_compute_or_memory_bound_follows_the_figures(tiny):
    _, path, flops = tiny
    traffic = model_traffic(path)
    slow_compute = estimate("tflite-fp32", flops, traffic, _performance(fp32=0.001, bandwidth=1000.0))
    slow_memory = estimate("tflite-fp32", flops, traffic, _performance(fp32=1000.0, bandwidth=0.001))
    assert slow_compute.bound == "compute" and slow_compute.latency_ms == slow_compute.compute_ms
    assert slow_memory.bound == "memory" and slow_memory.latency_ms == slow_memory.memory_ms


def test_int8_is_estimated_faster_than_fp32(tiny):
    _, path, flops = tiny
    performance = load_target("raspberry-pi-4").performance
    by_kind = {e.kind: e for e in estimate_all(["tflite-fp32", "tflite-int8"], flops, path, performance)}
    assert by_kind["tflite-int8"].latency_ms < by_kind["tflite-fp32"].latency_ms
    # the same peak for both still leaves int8 a quarter of the bytes
    same_peaks = _performance(fp32=100.0, int8=100.0, bandwidth=0.001)
    traffic = model_traffic(path)
    assert (estimate("onnx-int8", flops, traffic, same_peaks).memory_ms
            == pytest.approx(estimate("onnx-fp32", flops, traffic, same_peaks).memory_ms / 4))


def test_a_precision_without_a_peak_gives_no_estimate(tiny):
    _, path, flops = tiny
    coral = load_target("coral-edgetpu").performance
    assert coral.peak_gops.fp16 is None
    assert estimate("tflite-fp16", flops, model_traffic(path), coral) is None
    assert [e.kind for e in estimate_all(["tflite-fp32", "tflite-fp16", "tflite-int8"], flops, path, coral)] == [
        "tflite-fp32", "tflite-int8"]


def test_every_shipped_board_has_figures_and_sources(tiny):
    _, path, flops = tiny
    for name in ("raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "coral-edgetpu"):
        profile = load_target(name)
        assert profile.performance.source.startswith("https://")
        assert profile.performance.peak_gops.int8 and profile.performance.memory_bandwidth_gbs > 0
        estimates = estimate_all(profile.artifacts, flops, path, profile.performance)
        assert estimates and all(e.latency_ms > 0 for e in estimates)
    assert load_target("host").performance is None


def test_performance_is_optional_in_a_user_profile(tmp_path):
    text = (TARGETS_DIR / "raspberry-pi-4.yaml").read_text()
    path = tmp_path / "board.yaml"
    path.write_text(text[:text.index("performance:")].replace("name: raspberry-pi-4", "name: my-board"))
    profile = load_target(str(path))
    assert profile.performance is None
    assert replace(profile, performance=None).to_dict()["performance"] is None


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("fp32: 57.6,", "fp32: -1,",
         "field 'performance.peak_gops.fp32': bad value -1, expected a positive number of giga-operations per second, "
         "or null"),
        ("int8: 115.2", "int8: fast",
         "field 'performance.peak_gops.int8': bad value 'fast', expected a positive number"),
        ("memory_bandwidth_gbs: 12.8", "memory_bandwidth_gbs: null",
         "field 'performance.memory_bandwidth_gbs': bad value None, expected a positive number of GB/s"),
        ("memory_bandwidth_gbs: 12.8", "memory_bandwith_gbs: 12.8",
         "unknown field 'performance.memory_bandwith_gbs' (did you mean 'memory_bandwidth_gbs'?)"),
        ("{fp32: 57.6,", "{fp23: 57.6,", "unknown field 'performance.peak_gops.fp23' (did you mean 'fp32'?)"),
        ("  source: >-", "  sources: >-", "unknown field 'performance.sources' (did you mean 'source'?)"),
    ],
)
def test_bad_performance_names_file_field_and_value(tmp_path, old, new, message):
    text = (TARGETS_DIR / "raspberry-pi-4.yaml").read_text()
    assert old in text
    path = tmp_path / "board.yaml"
    path.write_text(text.replace("name: raspberry-pi-4", "name: my-board").replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_target(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_unknown_kind_is_named(tiny):
    _, path, flops = tiny
    with pytest.raises(ValueError, match="unknown artifact kind 'onnx-int4'"):
        estimate("onnx-int4", flops, model_traffic(path), _performance())
