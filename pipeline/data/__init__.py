"""Data: dataset readers (Fashion-MNIST IDX files, image folders, .npz) and the preprocessing spec."""
from .datasets import Dataset, DataSplits, load_dataset
from .preprocess import PreprocessSpec

__all__ = ["DataSplits", "Dataset", "PreprocessSpec", "load_dataset"]
