"""Calibration: the representative samples (shared by every int8 kind), and the activation ranges computed from
them for the kinds whose quantizer takes ranges (ONNX Runtime's)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..calibration import calibrate


def samples_step(plan) -> dict:
    """``num_samples`` training images picked with ``seed``, raw and as the model's preprocessed input."""
    options = plan.config.calibration

    def produce(tmp: Path) -> dict:
        subset = plan.data.train.take(options.num_samples, options.seed)
        inputs = plan.preprocess().apply(subset.images)
        np.save(tmp / "inputs.npy", inputs)
        np.save(tmp / "images.npy", subset.images)
        return {"files": {"inputs": "inputs.npy", "images": "images.npy"}, "num_samples": len(inputs)}

    params = {"num_samples": options.num_samples, "seed": options.seed}  # the data: through the model record
    return plan.shared_step("calibration-samples", "quantize", params, [plan.model_record], produce)


def ranges_step(plan, export: dict) -> dict:
    """The activation ranges of the exported graph over the samples, by the configured method."""
    options = plan.config.calibration
    samples = samples_step(plan)

    def produce(tmp: Path) -> dict:
        ranges = calibrate(plan.path(export, "onnx"), "input", np.load(plan.path(samples, "inputs")), options)
        ranges.save(tmp / "ranges.json")
        return {"files": {"ranges": "ranges.json"}, "method": options.method.value,
                "num_samples": ranges.num_samples, "tensors": len(ranges.ranges)}

    params = {k: v for k, v in asdict(options).items() if k not in ("num_samples", "seed")}
    params["method"] = options.method.value
    return plan.shared_step(f"calibrate-opset{export['data']['opset']}-{options.method.value}", "quantize", params,
                            [export, samples], produce)
