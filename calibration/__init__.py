"""Representative data: dataset readers, the preprocessing spec and int8 calibration methods."""
from .datasets import Dataset, DataSplits, load_dataset
from .methods import CalibrationMethod, CalibrationOptions, CalibrationRanges, TensorRange, calibrate
from .preprocess import PreprocessSpec
from .reader import ArrayDataReader

__all__ = [
    "ArrayDataReader",
    "CalibrationMethod",
    "CalibrationOptions",
    "CalibrationRanges",
    "DataSplits",
    "Dataset",
    "PreprocessSpec",
    "TensorRange",
    "calibrate",
    "load_dataset",
]
