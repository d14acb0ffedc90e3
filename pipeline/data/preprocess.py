"""The model's preprocessing: how raw images become its input tensor, and where that recipe came from.

``PreprocessOptions`` is what a user says (config ``preprocess:`` or flags): a preset or mean/std, channel order,
resize and crop, interpolation. A model source may carry its own (timm's ``pretrained_cfg``, a student's teacher);
``resolve`` picks what applies and ``PreprocessSpec`` is the result, stored with the model and in every manifest.
The arithmetic is ``board_runtime.imaging``'s, so that the board preprocesses exactly as the host does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from board_runtime.imaging import INTERPOLATIONS, to_input

from ..errors import ConfigError, ModelError

if TYPE_CHECKING:
    from .datasets import Dataset

# Per-channel (mean, std) on pixels in [0, 1]; one value means every channel.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision and most timm models
    "inception": ((0.5,), (0.5,)),  # Inception, EfficientNet-Lite (x - 127.5) / 127.5, many TF-ported models
    "unit": ((0.0,), (1.0,)),  # pixels in [0, 1] as they are
    "raw": ((0.0,), (1 / 255,)),  # pixels in [0, 255]
}
STATISTICS_BATCH = 1024  # images per batch when computing the training images' statistics
DATASET = "dataset"  # the statistics of the training images: the default for a model the pipeline trains


class ChannelOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


@dataclass(frozen=True)
class PreprocessOptions:
    """The ``preprocess:`` section: a ``preset`` or ``mean``/``std``; the rest applies to both."""

    preset: str | None = None  # imagenet | inception | unit | raw | dataset
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: ChannelOrder | None = None  # None: the model's own, else RGB
    resize: int | None = None  # the shorter side, before the crop (timm/torchvision evaluation: 256 then 224)
    crop: int | None = None  # a centred square
    interpolation: str | None = None  # None: the model's own, else bilinear

    def __post_init__(self):
        valid = [*PRESETS, DATASET]
        if self.preset is not None and self.preset not in valid:
            raise ConfigError(f"preprocess.preset: bad value {self.preset!r}, expected one of {', '.join(valid)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, str):  # --mean 0.485,0.456,0.406
                value = value.split(",")
            if value is not None:
                try:
                    value = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
                except (TypeError, ValueError):
                    raise ConfigError(f"preprocess.{name}: bad value {getattr(self, name)!r}, expected numbers "
                                      "per channel such as 0.485,0.456,0.406") from None
                object.__setattr__(self, name, value)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("preprocess: mean and std go together; give both (or a preset)")
        if self.mean is not None and self.preset is not None:
            raise ConfigError(f"preprocess: preset {self.preset!r} and mean/std both given; choose one")
        if self.mean is not None and (len(self.mean) != len(self.std) or min(self.std) <= 0):
            raise ConfigError(f"preprocess.std: bad value {list(self.std)!r}, expected positive numbers, one per mean")
        try:
            if self.channel_order is not None:
                object.__setattr__(self, "channel_order", ChannelOrder(self.channel_order))
        except ValueError:
            raise ConfigError(f"preprocess.channel_order: bad value {self.channel_order!r}, expected RGB or BGR") from None
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocess.interpolation: bad value {self.interpolation!r}, "
                              f"expected one of {', '.join(INTERPOLATIONS)}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"preprocess.{name}: bad value {value!r}, expected a positive number of pixels")
        if self.resize and self.crop and self.crop > self.resize:
            raise ConfigError(f"preprocess.crop: bad value {self.crop}, expected at most resize ({self.resize})")

    @property
    def normalisation_given(self) -> bool:
        return self.preset is not None or self.mean is not None

    def describe(self) -> str:
        values = lambda numbers: ",".join(f"{v:.4g}" for v in numbers)  # noqa: E731
        return f"preset {self.preset}" if self.preset else f"--mean {values(self.mean)} --std {values(self.std)}"


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model takes: ``(image[channel_order] - mean) / std`` on pixels in [0, 1], after resize and crop."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    source: str = "statistics of the training images"  # where the recipe came from, as reports say it
    letterbox: tuple[int, int] | None = None  # a detector's: images fitted into (H, W) on grey padding

    @classmethod
    def from_images(cls, images: np.ndarray, **recipe: Any) -> "PreprocessSpec":
        """The per-channel statistics of training images (NHWC in [0, 1])."""
        return cls.from_batches([images], 1, **recipe)

    @classmethod
    def from_batches(cls, batches: Iterable[np.ndarray], total: int | None = None, **recipe: Any) -> "PreprocessSpec":
        """The per-channel statistics of training images read batch by batch (NHWC in [0, 1]); float64 sums, so a
        split never has to be in memory at once."""
        count, sums, squares = 0, 0.0, 0.0
        for images in tqdm(batches, "image statistics", total, unit="batch", delay=2.0, leave=False):
            pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
            count, sums, squares = count + len(pixels), sums + pixels.sum(0), squares + np.square(pixels).sum(0)
        mean = sums / count
        std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
        return cls(tuple(round(float(m), 6) for m in mean), tuple(round(max(float(s), 1e-6), 6) for s in std), **recipe)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Images (NHWC, [0, 1]) -> the model's normalised NCHW float32 input."""
        if images.shape[-1] != len(self.mean):
            raise ValueError(f"images have {images.shape[-1]} channels, the preprocessing spec {len(self.mean)}")
        return to_input(images, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "scale": "1/255"}

    def describe(self) -> str:
        geometry = (f"shorter side resized to {self.resize}" if self.resize else "") + (
            f"{', then ' if self.resize else ''}centre crop {self.crop}x{self.crop}" if self.crop else "")
        stats = lambda values: ", ".join(f"{v:.4g}" for v in values)  # noqa: E731
        order = f"{self.channel_order} " if len(self.mean) == 3 else ""  # one channel has no order
        return (f"(x - [{stats(self.mean)}]) / [{stats(self.std)}] on {order}pixels / 255"
                + (f"; {geometry} ({self.interpolation})" if geometry else "") + f" — from {self.source}")


def resolve(options: PreprocessOptions, carried: tuple[PreprocessOptions, str] | None, channels: int,
            train: "Dataset | None", model: str) -> PreprocessSpec:
    """The user's preprocessing where given, else what the model carries; a one-line error when neither says.
    Resize, crop, interpolation and channel order likewise: the user's where given, else the model's own. ``train``
    (None without data) gives the statistics of the ``dataset`` preset."""
    own, carried_from = carried if carried else (PreprocessOptions(), "")
    if options.normalisation_given:
        chosen, source = options, f"the configuration ({options.describe()})"
    elif own.normalisation_given:
        chosen, source = own, carried_from
    else:
        raise ModelError(f"{model}: the model's preprocessing is unknown; give it with --preprocess "
                         f"{'|'.join([*PRESETS, DATASET])} or --mean/--std (per channel, on pixels in [0, 1])")
    recipe = {"source": source, **recipe_of(options, own)}
    if chosen.preset == DATASET:
        if train is None:
            raise ConfigError("preprocess.preset: 'dataset' needs training images; give --data or another preset")
        batches = (images for images, _ in train.batches(STATISTICS_BATCH))
        return PreprocessSpec.from_batches(batches, -(-len(train) // STATISTICS_BATCH), **recipe)
    mean, std = PRESETS[chosen.preset] if chosen.preset else (chosen.mean, chosen.std)
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels:
        raise ConfigError(f"preprocess: {len(mean)} mean/std values for images with {channels} channels")
    return PreprocessSpec(mean, std, **recipe)


def recipe_of(options: PreprocessOptions, own: PreprocessOptions) -> dict:
    """Channel order, resize, crop and interpolation: the user's where given, else the model's, else the defaults."""
    pick = lambda name: getattr(options, name) or getattr(own, name)  # noqa: E731
    order = pick("channel_order")
    return {"channel_order": order.value if order else "RGB", "resize": pick("resize"), "crop": pick("crop"),
            "interpolation": pick("interpolation") or "bilinear"}
