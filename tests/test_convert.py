"""TFLite conversion through onnx2tf: offline, whatever the PATH, for 1- and 3-channel inputs."""
import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, ConversionError
from pipeline.data import PreprocessSpec
from pipeline.formats.onnx_fp32 import export_onnx
from pipeline.formats.tflite import ONNX2TF_SAMPLE, convert_tflite, tflite_io
from pipeline.profile import IODtype, Layout
from tests.helpers import fft_net, rgb_net


@pytest.fixture
def offline_without_venv_on_path(monkeypatch):
    # Any download would go to a closed local port and fail at once; PATH holds only system folders.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


@pytest.mark.slow
def test_rgb_model_converts_offline_with_bare_path(tmp_path, offline_without_venv_on_path):
    torch.manual_seed(0)
    images = np.random.default_rng(0).random((24, 16, 16, 3)).astype(np.float32)
    spec = PreprocessSpec.from_images(images)
    model = rgb_net().eval()
    export_onnx(model, (1, 3, 16, 16), tmp_path / "rgb.onnx", 17)
    files = convert_tflite(tmp_path / "rgb.onnx", spec.apply(images), images, tmp_path / "tfl", "per-channel",
                           IODtype.INT8, Layout.NHWC)
    assert sorted(files) == ["fp16", "fp32", "int8"] and all(p.is_file() for p in files.values())
    assert (tmp_path / "tfl" / "onnx2tf" / ONNX2TF_SAMPLE).is_file()
    log = (tmp_path / "tfl" / "onnx2tf.log").read_text()
    assert "Model optimizing complete" in log and "Failed to optimize" not in log, "onnxsim must run"
    io = tflite_io(files["int8"])
    assert io["input_shape"] == (1, 16, 16, 3) and io["input_dtype"] == "int8" and io["input_quant"]["scale"] > 0
    assert tflite_io(files["fp32"])["input_dtype"] == "float32"
    # the fp32 TFLite model computes what PyTorch computes
    x = spec.apply(images[:1])
    np.testing.assert_allclose(float_tflite_outputs(files["fp32"], x), model(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4)


def float_tflite_outputs(path, inputs_nchw: np.ndarray) -> np.ndarray:
    """A float TFLite model's outputs on NCHW inputs, one sample at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    outputs = []
    for x in inputs_nchw:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None].transpose(0, 2, 3, 1).copy())
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return np.concatenate(outputs)


def test_op_the_exporter_cannot_handle(tmp_path):
    with pytest.raises(ConversionError) as info:
        export_onnx(fft_net().eval(), (1, 1, 28, 28), tmp_path / "fft.onnx", 17)
    message = str(info.value)
    assert message.startswith("fft.onnx: ONNX export at opset 17 failed") and "\n" not in message


def test_converter_failure_is_one_line_and_leaves_no_tflite(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    images = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ConversionError) as info:
        convert_tflite(broken, images.transpose(0, 3, 1, 2), images, tmp_path / "tfl", "per-channel",
                       IODtype.FLOAT32, Layout.NHWC)
    assert str(info.value).startswith("broken.onnx: onnx2tf failed") and "\n" not in str(info.value)
    assert not list((tmp_path / "tfl").glob("*.tflite"))


@pytest.mark.slow
def test_a_flex_op_is_one_line_naming_its_layer_and_the_builtin_remedy_works(tmp_path):
    """GELU exports as Erf, which onnx2tf writes as FlexErf: no board's TFLite runtime runs it."""
    from pipeline.tflite_file import read_tflite
    from tests.helpers import gelu_net

    torch.manual_seed(0)
    images = np.random.default_rng(0).random((16, 16, 16, 3)).astype(np.float32)
    inputs = PreprocessSpec.from_images(images).apply(images)
    export_onnx(gelu_net().eval(), (1, 3, 16, 16), tmp_path / "gelu.onnx", 17)
    with pytest.raises(ConversionError) as info:
        convert_tflite(tmp_path / "gelu.onnx", inputs, images, tmp_path / "flex", "per-channel", IODtype.INT8,
                       Layout.NHWC)
    message = str(info.value)
    assert message.startswith("gelu.onnx as tflite-fp32: FlexErf (layer '") and "\n" not in message
    assert message.endswith("is not a TFLite builtin op, and the boards' TFLite runtimes have no Flex delegate; "
                            "convert with onnx2tf's builtin approximations: --tflite-pseudo-ops Erf")
    files = convert_tflite(tmp_path / "gelu.onnx", inputs, images, tmp_path / "builtin", "per-channel", IODtype.INT8,
                           Layout.NHWC, pseudo_ops=("Erf",))
    for path in files.values():
        assert not read_tflite(path).non_builtin and "CONV_2D" in read_tflite(path).operators


def test_pseudo_ops_are_onnx2tfs_names():
    from pipeline import build_config

    assert build_config(tflite_pseudo_ops="Erf,GeLU").tflite_pseudo_ops == ("Erf", "GeLU")
    with pytest.raises(ConfigError, match="tflite_pseudo_ops: bad value 'erff', expected some of Asin, Acos"):
        build_config(tflite_pseudo_ops=["erff"])


@pytest.mark.slow
@pytest.mark.parametrize("grouped_conv", [True, False], ids=["grouped-conv", "no-grouped-conv"])
def test_a_depthwise_convolution_after_a_residual_add_stays_depthwise(tmp_path, grouped_conv):
    """onnx2tf 1.29 took it for a grouped convolution: a grouped CONV_2D, or (Coral: no grouped convolutions) one
    CONV_2D per channel between a SPLIT and a CONCATENATION."""
    from pipeline.tflite_file import read_graph
    from tests.helpers import ResidualThenDepthwiseNet

    torch.manual_seed(0)
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    inputs = PreprocessSpec.from_images(images).apply(images)
    model = ResidualThenDepthwiseNet().eval()
    export_onnx(model, (1, 1, 28, 28), tmp_path / "residual.onnx", 17)
    files = convert_tflite(tmp_path / "residual.onnx", inputs, images, tmp_path / "tfl", "per-channel-conv",
                           IODtype.UINT8, Layout.NHWC, grouped_conv=grouped_conv, int8=False)
    ops = [op.name for op in read_graph(files["fp32"]).ops]
    assert ops.count("DEPTHWISE_CONV_2D") == 1 and ops.count("CONV_2D") == 5, ops
    assert "SPLIT" not in ops and "CONCATENATION" not in ops
    np.testing.assert_allclose(float_tflite_outputs(files["fp32"], inputs[:2]),
                               model(torch.from_numpy(inputs[:2])).detach().numpy(), atol=1e-4)
