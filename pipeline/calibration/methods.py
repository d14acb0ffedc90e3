"""Int8 calibration: representative inputs in, typed per-tensor ranges out.

The quantizer only ever sees ``CalibrationRanges``; this module is the one place that runs data.
onnxruntime's ``quantize_static`` does not pass the histogram bin options to the entropy calibrator,
which then keeps the full range and gives MinMax's scales; calling ``create_calibrator`` directly
with ``num_bins`` > ``num_quantized_bins`` makes entropy really choose a clipping threshold.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError

CHUNK = 32  # samples per collect_data call: bounds the intermediate outputs held in memory


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"


@dataclass(frozen=True)
class CalibrationOptions:
    method: CalibrationMethod = CalibrationMethod.MINMAX
    num_samples: int = 512
    percentile: float = 99.999
    num_bins: int = 2048
    num_quantized_bins: int = 128
    seed: int = 0

    def __post_init__(self):
        try:
            object.__setattr__(self, "method", CalibrationMethod(self.method))
        except ValueError:
            valid = ", ".join(m.value for m in CalibrationMethod)
            raise ConfigError(f"calibration.method: bad value {self.method!r}, expected one of {valid}") from None
        if self.num_samples < 1:
            raise ConfigError(f"calibration.num_samples: bad value {self.num_samples!r}, expected an integer >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"calibration.percentile: bad value {self.percentile!r}, expected a number in (50, 100]")
        if self.num_quantized_bins >= self.num_bins:
            raise ConfigError("calibration.num_quantized_bins must be smaller than calibration.num_bins")


@dataclass(frozen=True)
class TensorRange:
    low: float
    high: float


@dataclass(frozen=True)
class CalibrationRanges:
    """The calibrated [low, high] of every activation tensor, by tensor name."""

    method: CalibrationMethod
    num_samples: int
    ranges: dict[str, TensorRange]

    def to_json(self) -> dict:
        return {
            "method": self.method.value,
            "num_samples": self.num_samples,
            "ranges": {name: [r.low, r.high] for name, r in sorted(self.ranges.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> "CalibrationRanges":
        ranges = {name: TensorRange(float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}
        return cls(CalibrationMethod(data["method"]), int(data["num_samples"]), ranges)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> "CalibrationRanges":
        return cls.from_json(json.loads(Path(path).read_text()))

    def to_onnxruntime(self):
        """The ranges as onnxruntime's ``TensorsData`` for its QDQ quantizer."""
        from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
        from onnxruntime.quantization.calibrate import TensorsData

        return TensorsData(
            OrtMethod.MinMax,
            {n: (np.array(r.low, np.float32), np.array(r.high, np.float32)) for n, r in self.ranges.items()},
        )


def _ort_calibrator(model_path: Path, options: CalibrationOptions, workdir: Path):
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    method, extra = {
        CalibrationMethod.MINMAX: (OrtMethod.MinMax, {"symmetric": False}),
        CalibrationMethod.PERCENTILE: (
            OrtMethod.Percentile,
            {"symmetric": False, "num_bins": options.num_bins, "percentile": options.percentile},
        ),
        CalibrationMethod.ENTROPY: (
            OrtMethod.Entropy,
            {"symmetric": False, "num_bins": options.num_bins, "num_quantized_bins": options.num_quantized_bins},
        ),
    }[options.method]
    return create_calibrator(
        model_path,
        op_types_to_calibrate=None,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=method,
        providers=["CPUExecutionProvider"],
        extra_options=extra,
    )


def calibrate(model_path: Path, input_name: str, inputs: np.ndarray, options: CalibrationOptions) -> CalibrationRanges:
    """Run ``inputs`` (preprocessed, batch dimension first) through the model and compute ranges."""
    from .reader import ArrayDataReader  # onnxruntime: imported when calibrating, not when reading options

    with tempfile.TemporaryDirectory(prefix="calib.") as workdir:
        calibrator = _ort_calibrator(Path(model_path), options, Path(workdir))
        with tqdm(total=len(inputs), desc=f"calibrate ({options.method.value})", unit="sample") as bar:
            for start in range(0, len(inputs), CHUNK):
                chunk = inputs[start : start + CHUNK]
                calibrator.collect_data(ArrayDataReader(input_name, chunk, batch_size=1))  # static batch 1
                bar.update(len(chunk))
        tensors = calibrator.compute_data()
    ranges = {}
    for name, data in tensors.items():
        low, high = data.range_value
        ranges[name] = TensorRange(float(np.asarray(low).min()), float(np.asarray(high).max()))
    return CalibrationRanges(options.method, len(inputs), ranges)
