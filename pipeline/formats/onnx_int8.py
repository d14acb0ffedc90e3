"""onnx-int8: ONNX Runtime static int8 (QDQ) from the calibration step's ranges, in the target's int8 scheme.

The quantizer consumes ``CalibrationRanges`` only; the calibration step is what touches data.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..calibration import CalibrationRanges
from ..errors import ConversionError
from ..profile import Int8Granularity, Int8Scheme
from .registry import Format, float_io, register_format


def quantize_int8(model_path: Path, ranges: CalibrationRanges, out_path: Path, scheme: Int8Scheme) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    model = load_model_with_shape_infer(Path(model_path))
    quantizer = QDQQuantizer(
        model,
        scheme.granularity is Int8Granularity.PER_CHANNEL,  # per_channel
        False,  # reduce_range: int8 kernels on ARM and x86-VNNI need no 7-bit weights
        QuantType.QInt8,  # weights
        QuantType.QInt8 if scheme.activation_symmetric else QuantType.QUInt8,  # activations
        ranges.to_onnxruntime(),
        [],  # nodes_to_quantize: all
        [],  # nodes_to_exclude: none
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": True},
    )
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint per call
    try:
        quantizer.quantize_model()
    except Exception as exc:
        raise ConversionError(f"{model_path.name}: int8 quantization failed: {exc}") from exc
    quantizer.model.save_model_to_file(str(out_path))


def build(plan, target) -> tuple[dict, str]:
    export, onnx_key = plan.build("onnx-fp32", target)
    ranges = plan.calibration_ranges(export)
    scheme = target.int8
    method, samples = ranges["data"]["method"], ranges["data"]["num_samples"]
    name = (f"quantize-opset{export['data']['opset']}-{method}-{scheme.granularity.value}-"
            f"{'sym' if scheme.activation_symmetric else 'asym'}")

    def produce(tmp: Path) -> dict:
        quantize_int8(plan.path(export, onnx_key), CalibrationRanges.load(plan.path(ranges, "ranges")),
                      tmp / "model_int8.onnx", scheme)
        return {"files": {"onnx": "model_int8.onnx"},
                "calibration": {"onnx": f"{method} ranges from ONNX Runtime's calibrator on {samples} samples"}}

    params = {"granularity": scheme.granularity.value, "symmetric": scheme.activation_symmetric}
    return plan.shared_step(name, "quantize", params, [export, ranges], produce), "onnx"


register_format(Format(kind="onnx-int8", format="onnx", precision="int8", label="ONNX int8 (QDQ)", stage="quantize",
                       session="onnx", runtimes=("onnxruntime", "onnxruntime-cuda"), build=build, io=float_io))
