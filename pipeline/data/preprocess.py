"""The preprocessing spec: how [0, 1] NHWC images become the model's input tensor."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """``(image - mean) / std`` per channel, on images scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_images(cls, images: np.ndarray) -> "PreprocessSpec":
        """Per-channel statistics of a training set (NHWC in [0, 1])."""
        mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
        std = images.std(axis=(0, 1, 2), dtype=np.float64)
        return cls(tuple(round(float(m), 6) for m in mean), tuple(round(max(float(s), 1e-6), 6) for s in std))

    def apply(self, images: np.ndarray, layout: str = "NCHW") -> np.ndarray:
        """Normalised float32 tensor in ``layout`` (NCHW or NHWC)."""
        if images.shape[-1] != len(self.mean):
            raise ValueError(f"images have {images.shape[-1]} channels, the preprocessing spec {len(self.mean)}")
        out = (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        out = out.astype(np.float32)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if layout == "NCHW" else out

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": "1/255", "layout_of_stats": "per channel"}
