"""Model sources that are PyTorch code or PyTorch files: built-in nets, ``package.module:factory``, TorchScript
(.pt) and ``torch.export`` (.pt2) files."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from board_runtime.imaging import INTERPOLATIONS

from ..data.preprocess import DATASET, PreprocessOptions
from ..errors import ModelError
from ..nets import BUILTINS, list_builtins
from ..torchmodel import import_callable, load_state_dict
from .registry import ModelSource, SourceKind, register_source


def _with_weights(model, source: ModelSource) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelError(f"{source.model}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if source.weights:
        load_state_dict(model, Path(source.weights), source.model)
    return model.eval()


def _serialized(kind: str):
    def load(source: ModelSource, in_channels: int, num_classes: int) -> nn.Module:
        path = Path(source.model)
        if source.weights:
            raise ModelError(f"{source.weights}: --weights is for factory and built-in models; {path} holds its own")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        try:
            if kind == "exported":
                return torch.export.load(str(path)).module()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a loadable {kind} model ({first[:200]})") from exc

    return load


def _timm_preprocessing(source: ModelSource) -> tuple[PreprocessOptions, str] | None:
    """The evaluation preprocessing a timm model carries in ``pretrained_cfg`` (mean, std, input size, crop_pct)."""
    cfg = getattr(import_callable(source.model)(), "pretrained_cfg", None)
    if not isinstance(cfg, dict) or "mean" not in cfg or "std" not in cfg:
        return None
    size = int(cfg.get("input_size", (3, 0, 0))[-1]) or None
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in INTERPOLATIONS else None
    return (PreprocessOptions(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=interpolation,
                              resize=int(math.floor(size / crop_pct)) if size else None, crop=size),
            f"the model's pretrained_cfg ({source.model})")


register_source(SourceKind(
    "builtin", lambda model: model in BUILTINS,
    lambda source, channels, classes: _with_weights(BUILTINS[source.model].factory(in_channels=channels, num_classes=classes),
                                                    source),
    usage=f"a built-in name ({', '.join(list_builtins())})", trainable=True, keeps_weights=True, profile_budgets=True,
    preprocessing=lambda source: (PreprocessOptions(preset=DATASET),
                                  "statistics of the training images (the built-in nets are trained on them)"),
))
register_source(SourceKind(
    "factory", lambda model: ":" in model and not Path(model).exists(),
    lambda source, channels, classes: _with_weights(import_callable(source.model)(), source),
    usage="package.module:factory", keeps_weights=True, preprocessing=_timm_preprocessing,
))
register_source(SourceKind("exported", lambda model: model.endswith(".pt2"), _serialized("exported"),
                           usage="a torch.export (.pt2) file"))
register_source(SourceKind("torchscript", lambda model: model.endswith((".pt", ".pth", ".ts", ".torchscript")),
                           _serialized("torchscript"), usage="a TorchScript (.pt) file"))
