"""onnx-int8: ONNX Runtime static int8 (QDQ) from the calibration step's ranges, in the target's int8 scheme.

The quantizer consumes ``CalibrationRanges`` only; the calibration step is what touches data.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np


from calibration import CalibrationRanges
from calibration.fallback import by_output_impact, keep_in_float
from calibration.sensitivity import activation_errors, fallback_candidates, onnx_tail

from ..compat import toolchain_of
from ..errors import ConversionError
from ..profile import Int8Granularity, Int8Scheme
from .registry import Format, float_io, register_format


SENSITIVITY_SAMPLES = 32  # calibration samples the per-tensor error analysis runs on


def ranges_note(data: dict) -> str:
    """Which ranges the int8 model has, and how they were chosen."""
    note = f"{data['label']} ranges from ONNX Runtime's calibrator on {data['num_samples']} samples"
    if "candidates" not in data:
        return note
    scores = ", ".join(f"{c['ranges']} {c['sqnr_db']:.1f} dB" for c in data["candidates"])
    return f"{note}, chosen by the int8 model's output SQNR on {data['held_out']} held-out samples ({scores})"


def tail_note(tail: list[str]) -> str:
    return f"the {len(tail)} decoding ops after the last convolution kept in float" if tail else ""


def quantize_int8(model_path: Path, ranges: CalibrationRanges, out_path: Path, scheme: Int8Scheme,
                  exclude: list[str] | tuple[str, ...] = (), quantized_bias: bool = True) -> None:
    """``model_path`` in int8 QDQ with ``ranges``, every node but those named in ``exclude`` (kept in float);
    biases in int32, or in float where the board's toolchain takes no int32 bias (TensorRT)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    model = load_model_with_shape_infer(Path(model_path))
    # per-channel-conv keeps the weights of fully connected layers per tensor: a per-tensor override on each
    constants = {i.name for i in model.graph.initializer}
    dense = [node.input[1] for node in model.graph.node if node.op_type in ("Gemm", "MatMul")
             and len(node.input) > 1 and node.input[1] in constants] \
        if scheme.granularity is Int8Granularity.PER_CHANNEL_CONV else []
    quantizer = QDQQuantizer(
        model,
        scheme.granularity is not Int8Granularity.PER_TENSOR,  # per_channel
        False,  # reduce_range: int8 kernels on ARM and x86-VNNI need no 7-bit weights
        QuantType.QInt8,  # weights
        QuantType.QInt8 if scheme.activation_symmetric else QuantType.QUInt8,  # activations
        ranges.to_onnxruntime(),
        [],  # nodes_to_quantize: all
        list(exclude),  # nodes_to_exclude
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": True, "QuantizeBias": quantized_bias,
         **({"TensorQuantOverrides": {name: [{"symmetric": True}] for name in dense}} if dense else {})},
    )
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint per call
    try:
        quantizer.quantize_model()
    except Exception as exc:
        raise ConversionError(f"{model_path.name}: int8 quantization failed: {exc}") from exc
    quantizer.model.save_model_to_file(str(out_path))


def int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 initializers of a QDQ model: its quantized weights."""
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8]


def build(plan, target) -> tuple[dict, str]:
    export, export_key = plan.build("onnx-fp32", target)
    model, model_key = plan.int8_model(target)
    samples = plan.calibration_samples()
    ranges = plan.calibration_ranges(target)
    scheme = target.int8
    method = ranges["data"]["method"]
    variant = plan.variant(model)
    quantized_bias = toolchain_of(target).quantized_bias
    # ONNX Runtime runs float ops beside int8 ones: a detector's decoding stays in float, as NNCF's YOLOv8 recipe
    # keeps it
    float_tail = plan.task_row.float_tail
    tolerance = plan.task_row.fallback_tolerance(target)
    name = (f"quantize-opset{model['data']['opset']}{variant}-{method}-{scheme.granularity.value}-"
            f"{'sym' if scheme.activation_symmetric else 'asym'}{'' if quantized_bias else '-float-bias'}"
            f"-tol{tolerance:g}" + ("-float-tail" if float_tail else ""))

    def produce(tmp: Path) -> dict:
        chosen_ranges, out = CalibrationRanges.load(plan.path(ranges, "ranges")), tmp / "model_int8.onnx"
        tail = onnx_tail(plan.path(model, model_key)) if float_tail else []
        quantize = lambda exclude, path: quantize_int8(plan.path(model, model_key), chosen_ranges, path,  # noqa: E731
                                                       scheme, [*tail, *exclude], quantized_bias)
        quantize([], out)
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")
        judged = inputs[plan.untrained_from(model):]  # the fallback judges on samples the weights were not trained on
        reference = plan.path(export, export_key)
        errors = activation_errors(reference, out, "input", inputs[:SENSITIVITY_SAMPLES])
        # ONNX Runtime runs any op in float beside int8 ones (CPU and TensorRT alike): fall back where int8 costs most
        # at the outputs, as measured on the samples the sensitivity table uses, judged by the task's agreement
        harmful = by_output_impact(quantize, reference, tmp / "impact_trial.onnx", judged[:SENSITIVITY_SAMPLES],
                                   fallback_candidates(reference, errors))
        fallback = keep_in_float(quantize, reference, out, judged, harmful, tolerance,
                                 judge=plan.task_row.judge(plan, tuple(inputs.shape[2:])))
        (tmp / "impact_trial.onnx").unlink(missing_ok=True)
        if fallback.kept and fallback.reached:
            errors = activation_errors(reference, out, "input", inputs[:SENSITIVITY_SAMPLES])
        weights, kept = plan.weights_note(model, int8_weights(out), "onnx")
        note = "; ".join(n for n in (ranges_note(ranges["data"]), weights, tail_note(tail), fallback.note(tolerance))
                         if n)
        return {"files": {"onnx": "model_int8.onnx"}, "calibration": {"onnx": note}, "weights_kept": list(kept),
                "fallback": fallback.to_json(),
                "sensitivity": {"samples": min(len(inputs), SENSITIVITY_SAMPLES), "tensors": [e.to_json() for e in errors]}}

    params = {"granularity": scheme.granularity.value, "symmetric": scheme.activation_symmetric,
              "tolerance": tolerance, **({} if quantized_bias else {"quantized_bias": False}),
              **({"float_tail": True} if float_tail else {})}
    return plan.shared_step(name, "quantize", params, [export, model, samples, ranges], produce), "onnx"


register_format(Format(kind="onnx-int8", format="onnx", precision="int8", label="ONNX int8 (QDQ)", stage="quantize",
                       session="onnx", runtimes=("onnxruntime", "onnxruntime-cuda"), build=build, io=float_io))
