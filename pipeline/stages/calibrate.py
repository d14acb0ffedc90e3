"""Calibration: the representative samples (shared by every int8 kind), and the activation ranges computed from
them for the kinds whose quantizer takes ranges (ONNX Runtime's)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from ..calibration import calibrate
from ..data.datasets import BATCH


def samples_step(plan) -> dict:
    """``num_samples`` training images picked with ``seed``, raw and as the model's preprocessed input."""
    options = plan.config.calibration

    def produce(tmp: Path) -> dict:
        subset, spec = plan.data.train.take(options.num_samples, options.seed), plan.preprocess()
        height, width, channels = plan.data.image_shape
        # Written batch by batch into .npy files mapped from disk; readers map them too.
        images = open_memmap(tmp / "images.npy", "w+", np.float32, (len(subset), height, width, channels))
        inputs = open_memmap(tmp / "inputs.npy", "w+", np.float32, (len(subset), channels, height, width))
        start = 0
        for batch, _ in tqdm(subset.batches(), "calibration samples", -(-len(subset) // BATCH), unit="batch",
                             delay=2.0, leave=False):
            images[start : start + len(batch)], inputs[start : start + len(batch)] = batch, spec.apply(batch)
            start += len(batch)
        images.flush()
        inputs.flush()
        return {"files": {"inputs": "inputs.npy", "images": "images.npy"}, "num_samples": len(subset)}

    params = {"num_samples": options.num_samples, "seed": options.seed}  # the data: through the model record
    return plan.shared_step("calibration-samples", "quantize", params, [plan.model_record], produce)


def ranges_step(plan, export: dict) -> dict:
    """The activation ranges of the exported graph over the samples, by the configured method."""
    options = plan.config.calibration
    samples = samples_step(plan)

    def produce(tmp: Path) -> dict:
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")  # read a chunk at a time
        ranges = calibrate(plan.path(export, "onnx"), "input", inputs, options)
        ranges.save(tmp / "ranges.json")
        return {"files": {"ranges": "ranges.json"}, "method": options.method.value,
                "num_samples": ranges.num_samples, "tensors": len(ranges.ranges)}

    params = {k: v for k, v in asdict(options).items() if k not in ("num_samples", "seed")}
    params["method"] = options.method.value
    return plan.shared_step(f"calibrate-opset{export['data']['opset']}-{options.method.value}", "quantize", params,
                            [export, samples], produce)
