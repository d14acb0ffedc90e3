"""Int8 calibration, on its own: representative inputs in, typed per-tensor ranges out (the quantizers never touch data);
int8 weights chosen from data (GPTQ's rounding, quantization-aware tuning of an ONNX graph run in torch); the
int8 errors per tensor and the mixed-precision fallback. It imports nothing from the ``pipeline`` (ONNX files,
numpy arrays and ONNX Runtime in, files and dataclasses out), as NNCF is used beside a tool, so the pipeline
imports it and not the other way round.
"""
from .methods import (CalibrationMethod, CalibrationOptions, CalibrationRanges, OptionError, TensorRange, WeightRounding,
                      calibrate)
from .weights import Int8Granularity

__all__ = ["CalibrationMethod", "CalibrationOptions", "CalibrationRanges", "Int8Granularity", "OptionError",
           "TensorRange", "WeightRounding", "calibrate"]
