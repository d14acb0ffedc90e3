"""Torch model helpers: importing a factory, loading a state_dict, checking the input, counting, tracing."""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ModelError, not_logits


def import_callable(ref: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:name``."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail with anything: a missing module, a CUDA-only build
        raise ModelError(f"{ref}: cannot import module '{module_name}' ({type(exc).__name__}: {exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{ref}: module '{module_name}' has no callable '{attr}'")
    return factory


def load_state_dict(model: nn.Module, path: Path, model_name: str) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state
                  and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(f"{label} {len(items)}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}")
        raise ModelError(f"{path}: does not match model '{model_name}' ({'; '.join(parts)})")
    model.load_state_dict(state)


def _forward(model: nn.Module, input_shape: tuple[int, ...], name: str):
    """One forward pass on zeros; a model that does not accept the data's shape fails here, clearly."""
    try:
        with torch.no_grad():
            return model(torch.zeros(input_shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"{name}: does not accept input of shape {list(input_shape)} from the data ({first})") from exc


def check_input(model: nn.Module, input_shape: tuple[int, ...], name: str, num_classes: int) -> None:
    """Run one forward pass so that a model that does not accept the data, or gives no logits, fails here."""
    out = _forward(model, input_shape, name)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise not_logits(name, shape, num_classes)


def check_detector(model: nn.Module, input_shape: tuple[int, ...], name: str, decoder: dict) -> list[str]:
    """Run one forward pass and decode it, so that a detector its decoder cannot read fails here, clearly; the
    names of its outputs (its ``OUTPUT_NAMES``, else output0, output1, ...)."""
    from board_runtime.detection import postprocess

    out = _forward(model, input_shape, name)
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) and o.ndim >= 1 and o.shape[0] == 1 for o in outputs):
        raise ModelError(f"{name}: a detector's outputs must be tensors with a batch dim of 1, got "
                         f"{[list(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in outputs]}")
    try:
        postprocess([o.numpy() for o in outputs], tuple(input_shape[2:]), decoder)
    except (ValueError, IndexError) as exc:
        raise ModelError(f"{name}: decoder '{decoder['decoder']}' cannot read outputs "
                         f"{[list(o.shape) for o in outputs]} ({exc})") from exc
    names = list(getattr(model, "OUTPUT_NAMES", ()))
    return names if len(names) == len(outputs) else [f"output{i}" for i in range(len(outputs))]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter``: a multiply-add counts as 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(input_shape))
    return int(counter.get_total_flops())


def save_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """The PyTorch reference artifact: a traced TorchScript file the runner can time in a fresh process."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, torch.zeros(input_shape))
            traced.save(str(path))
    except Exception as exc:
        raise ModelError(f"{path.name}: cannot trace the model to TorchScript ({str(exc).splitlines()[0][:200]})") from exc
