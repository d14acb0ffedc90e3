"""A calibration data reader with onnxruntime's one-method protocol: ``get_next() -> dict | None``."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class ArrayDataReader(CalibrationDataReader):
    """Feeds an array of model inputs to one graph input, ``batch_size`` samples at a time."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int = 1):
        self.input_name, self.inputs, self.batch_size = input_name, inputs, batch_size
        self._batches: Iterator[np.ndarray] = self._iterate()

    def _iterate(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.inputs), self.batch_size):
            yield np.ascontiguousarray(self.inputs[start : start + self.batch_size])  # also from a mapped file

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)
