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


CHUNK = 32  # samples per collect_data call: bounds the intermediate outputs held in memory


class OptionError(ValueError):
    """An invalid calibration option, named with its value (the pipeline reports it as a configuration error)."""


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"  # per tensor, the clipping range whose int8 rounding and clipping error is least
    AUTO = "auto"  # each of the others computed, and the one whose int8 model is closest on held-out samples kept


class WeightRounding(str, Enum):
    NEAREST = "nearest"  # the converters' own: each weight to its nearest int8 value
    GPTQ = "gptq"  # chosen from calibration data to minimise each layer's output error, then bias correction
    TUNED = "tuned"  # GPTQ's, then trained through the int8 model's rounding to match the float model's outputs


@dataclass(frozen=True)
class CalibrationOptions:
    method: CalibrationMethod = CalibrationMethod.AUTO
    weight_rounding: WeightRounding = WeightRounding.TUNED
    num_samples: int = 512
    percentile: float = 99.999
    num_bins: int = 2048
    num_quantized_bins: int = 128
    seed: int = 0
    tuning_steps: int = 80  # optimizer steps of quantization-aware tuning (weight_rounding "tuned")

    def __post_init__(self):
        for name, enum in (("method", CalibrationMethod), ("weight_rounding", WeightRounding)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                valid = ", ".join(m.value for m in enum)
                raise OptionError(f"calibration.{name}: bad value {getattr(self, name)!r}, expected one of {valid}") \
                    from None
        if self.num_samples < 1:
            raise OptionError(f"calibration.num_samples: bad value {self.num_samples!r}, expected an integer >= 1")
        if self.tuning_steps < 1:
            raise OptionError(f"calibration.tuning_steps: bad value {self.tuning_steps!r}, expected an integer >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise OptionError(f"calibration.percentile: bad value {self.percentile!r}, expected a number in (50, 100]")
        if self.num_quantized_bins >= self.num_bins:
            raise OptionError("calibration.num_quantized_bins must be smaller than calibration.num_bins")


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
    setting: str = ""  # what else names the candidate, e.g. a percentile

    @property
    def label(self) -> str:
        return f"{self.method.value}{' ' + self.setting if self.setting else ''}"

    def to_json(self) -> dict:
        return {
            "method": self.method.value,
            "setting": self.setting,
            "num_samples": self.num_samples,
            "ranges": {name: [r.low, r.high] for name, r in sorted(self.ranges.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> "CalibrationRanges":
        ranges = {name: TensorRange(float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}
        return cls(CalibrationMethod(data["method"]), int(data["num_samples"]), ranges, data.get("setting", ""))

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
    }.get(options.method, (OrtMethod.Entropy, {"symmetric": False, "num_bins": options.num_bins,
                                               "num_quantized_bins": options.num_quantized_bins}))
    return create_calibrator(
        model_path,
        op_types_to_calibrate=None,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=method,
        providers=["CPUExecutionProvider"],
        extra_options=extra,
    )


def _collect(model_path: Path, input_name: str, inputs: np.ndarray, options: CalibrationOptions):
    """The calibrator for ``options.method`` after a pass over ``inputs`` (MSE and AUTO: the entropy calibrator's,
    whose histograms are of signed values over the whole range seen)."""
    from .reader import ArrayDataReader  # onnxruntime: imported when calibrating, not when reading options

    workdir = tempfile.TemporaryDirectory(prefix="calib.")
    calibrator = _ort_calibrator(Path(model_path), options, Path(workdir.name))
    with tqdm(total=len(inputs), desc=f"calibrate ({options.method.value})", unit="sample", delay=2.0) as bar:
        for start in range(0, len(inputs), CHUNK):
            chunk = inputs[start : start + CHUNK]
            calibrator.collect_data(ArrayDataReader(input_name, chunk, batch_size=1))  # static batch 1
            bar.update(len(chunk))
    calibrator.workdir = workdir  # removed with the calibrator
    return calibrator


def _ranges(tensors) -> dict[str, TensorRange]:
    ranges = {}
    for name, data in tensors.items():
        low, high = data.range_value if hasattr(data, "range_value") else data[:2]
        ranges[name] = TensorRange(float(np.asarray(low).min()), float(np.asarray(high).max()))
    return ranges


def _histogram_range(histogram, method: CalibrationMethod, percentile: float) -> TensorRange:
    """minmax, a two-sided percentile, or the least-squared-error range of one tensor's signed histogram."""
    counts, edges, low, high = histogram[0].astype(np.float64), histogram[1], float(histogram[2]), float(histogram[3])
    if method is CalibrationMethod.MINMAX or counts.sum() == 0 or high <= low:
        return TensorRange(low, high)
    centres = (edges[:-1] + edges[1:]) / 2
    if method is CalibrationMethod.PERCENTILE:
        cdf = np.cumsum(counts) / counts.sum()
        cut = (100.0 - percentile) / 200.0
        return TensorRange(min(0.0, max(low, float(edges[np.searchsorted(cdf, cut)]))),
                           max(0.0, min(high, float(edges[min(np.searchsorted(cdf, 1.0 - cut) + 1, len(edges) - 1)]))))
    # MSE: shrink both ends towards 0 by a common factor; inside, rounding costs step^2 / 12 per value, outside,
    # the distance to the end. (0 stays inside the range, as int8 needs an exact zero.)
    best = None
    for factor in np.linspace(1.0, 0.05, 96):
        lo, hi = min(0.0, low * factor), max(0.0, high * factor)
        step = (hi - lo) / 255
        clipped = np.clip(centres, lo, hi)
        inside = (centres >= lo) & (centres <= hi)
        error = counts[inside].sum() * step**2 / 12 + (counts * (centres - clipped) ** 2).sum()
        if best is None or error < best[0]:
            best = (error, lo, hi)
    return TensorRange(best[1], best[2])


def candidate_ranges(model_path: Path, input_name: str, inputs: np.ndarray, options: CalibrationOptions
                     ) -> list[CalibrationRanges]:
    """From one pass over ``inputs``: the ranges of minmax, percentile (99.99 and the configured one), entropy and
    MSE, each computed from the same signed histograms."""
    calibrator = _collect(model_path, input_name, inputs, options)
    histograms = calibrator.collector.histogram_dict
    found = [CalibrationRanges(CalibrationMethod.ENTROPY, len(inputs), _ranges(calibrator.compute_data().data),
                               f"{options.num_bins}/{options.num_quantized_bins} bins")]
    for method, setting in ((CalibrationMethod.MINMAX, ""), (CalibrationMethod.PERCENTILE, 99.99),
                            (CalibrationMethod.PERCENTILE, options.percentile), (CalibrationMethod.MSE, "")):
        if setting and any(r.setting == f"{setting:g}" for r in found):
            continue
        ranges = {name: _histogram_range(h, method, float(setting or 0)) for name, h in histograms.items()}
        found.append(CalibrationRanges(method, len(inputs), ranges, f"{setting:g}" if setting else ""))
    calibrator.workdir.cleanup()
    return found


def calibrate(model_path: Path, input_name: str, inputs: np.ndarray, options: CalibrationOptions) -> CalibrationRanges:
    """Run ``inputs`` (preprocessed, batch dimension first) through the model and compute ranges (AUTO is chosen
    by the calibration step, which judges ``candidate_ranges``)."""
    if options.method is CalibrationMethod.AUTO:
        raise ValueError("calibration.method auto is chosen by the calibration step among candidate_ranges()")
    if options.method is CalibrationMethod.MSE:
        return next(r for r in candidate_ranges(model_path, input_name, inputs, options)
                    if r.method is CalibrationMethod.MSE)
    calibrator = _collect(model_path, input_name, inputs, options)
    ranges = _ranges(calibrator.compute_data().data)
    calibrator.workdir.cleanup()
    return CalibrationRanges(options.method, len(inputs), ranges,
                             f"{options.percentile:g}" if options.method is CalibrationMethod.PERCENTILE else "")
