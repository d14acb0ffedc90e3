"""Quantize: ONNX Runtime static int8 (QDQ, per-channel weights) from calibrated ranges, and ONNX fp16.

The quantizer consumes ``CalibrationRanges`` only; the calibration stage is what touches data.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from calibration import CalibrationRanges

from ..errors import ConversionError
from ..targets import Int8Granularity, Int8Scheme


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


def convert_fp16(model_path: Path, out_path: Path) -> None:
    """fp16 weights and compute with fp32 inputs and outputs, as TensorRT and CUDA take them."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
