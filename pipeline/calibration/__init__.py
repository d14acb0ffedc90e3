"""Int8 calibration: representative inputs in, typed per-tensor ranges out (the quantizers never touch data)."""
from .methods import CalibrationMethod, CalibrationOptions, CalibrationRanges, TensorRange, WeightRounding, calibrate

__all__ = ["CalibrationMethod", "CalibrationOptions", "CalibrationRanges", "TensorRange", "WeightRounding",
           "calibrate"]
