"""Calibration methods each give their own ranges, and the int8 QDQ graph is built from them."""
import numpy as np
import onnx
import pytest

from pipeline.errors import ConfigError
from pipeline.calibration import CalibrationMethod, CalibrationOptions, CalibrationRanges, calibrate
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.formats.onnx_fp16 import convert_fp16
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.formats.onnx_int8 import quantize_int8
from pipeline.nets import fmnist_tiny
from pipeline.targets import load_target


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("calib") / "tiny.onnx"
    export_onnx(fmnist_tiny().eval(), (1, 1, 28, 28), path, 17)
    data = load_dataset(None).train.take(96)
    return path, PreprocessSpec.from_images(data.read()).apply(data.read())


@pytest.fixture(scope="module")
def ranges(tiny_onnx):
    path, inputs = tiny_onnx
    return {m: calibrate(path, "input", inputs, CalibrationOptions(method=m, num_samples=len(inputs)))
            for m in CalibrationMethod}


def _activations(r: CalibrationRanges) -> dict:
    return {n: (v.low, v.high) for n, v in r.ranges.items() if n != "input"}


def test_each_method_yields_its_own_ranges(ranges):
    minmax, entropy, percentile = (_activations(ranges[m]) for m in CalibrationMethod)
    assert minmax.keys() == entropy.keys() == percentile.keys() and len(minmax) > 5
    for name, other in (("entropy", entropy), ("percentile", percentile)):
        differing = [t for t in minmax if not np.allclose(minmax[t], other[t], rtol=1e-4)]
        assert len(differing) >= len(minmax) // 2, f"{name} ranges equal MinMax's on {len(minmax) - len(differing)} tensors"
        # both clip outliers: their highs are never above the observed maximum
        assert all(other[t][1] <= minmax[t][1] + 1e-6 for t in minmax)


def test_ranges_round_trip_json(ranges, tmp_path):
    ranges[CalibrationMethod.ENTROPY].save(tmp_path / "r.json")
    assert CalibrationRanges.load(tmp_path / "r.json") == ranges[CalibrationMethod.ENTROPY]


def test_bad_calibration_method_is_rejected():
    with pytest.raises(ConfigError, match="calibration.method: bad value 'kl', expected one of minmax, percentile, entropy"):
        CalibrationOptions(method="kl")


def _ops(path):
    counts = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_qdq_graph_per_channel(tiny_onnx, ranges, tmp_path):
    path, _ = tiny_onnx
    out = tmp_path / "int8.onnx"
    quantize_int8(path, ranges[CalibrationMethod.MINMAX], out, load_target("raspberry-pi-4").int8)
    ops = _ops(out)
    convs = _ops(path)["Conv"]
    assert ops["Conv"] == convs and ops["QuantizeLinear"] >= convs and ops["DequantizeLinear"] >= 2 * convs
    graph = onnx.load(str(out)).graph
    initializers = {i.name: i for i in graph.initializer}
    dequantized_by = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        weight = dequantized_by[conv.input[1]]  # the weight arrives dequantized from int8
        scale = initializers[weight.input[1]]
        assert len(scale.dims) == 1 and scale.dims[0] > 1, f"{conv.name}: weight scale is not per-channel"


def test_symmetric_activations_for_tensorrt(tiny_onnx, ranges, tmp_path):
    path, _ = tiny_onnx
    out = tmp_path / "int8_sym.onnx"
    quantize_int8(path, ranges[CalibrationMethod.MINMAX], out, load_target("jetson-nano").int8)
    graph = onnx.load(str(out)).graph
    zero_points = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_zero_point")]
    eight_bit = [z for z in zero_points if z.dtype != np.int32]  # int32 ones belong to the biases
    assert eight_bit and all(z.dtype == np.int8 and not z.any() for z in eight_bit)


def test_fp16_keeps_float32_io(tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    convert_fp16(path, tmp_path / "fp16.onnx")
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
