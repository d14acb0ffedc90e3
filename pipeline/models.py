"""Built-in CNNs and loading of user models (factories with state_dicts, TorchScript, torch.export)."""
from __future__ import annotations

import difflib
import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ModelError

_BUILTINS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(factory):
        if name in _BUILTINS:
            raise ValueError(f"built-in model '{name}' is registered twice")
        _BUILTINS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    return sorted(_BUILTINS)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a shortcut, one tensor in and one out."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet for low-resolution images, laid out torchvision-style: ``features`` then ``classifier``.

    The first two blocks halve the resolution; later blocks keep it.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, widths[0])]
        for index, width in enumerate(widths[1:]):
            layers.append(BasicBlock(widths[index], width, stride=2 if index < 2 else 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("fmnist-resnet")
def fmnist_resnet(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The default teacher: 0.58M parameters, 74 MFLOPs at 28x28; over-parameterised on purpose."""
    return ResNetCNN(in_channels, num_classes, (32, 64, 128, 128))


@register_model("fmnist-tiny")
def fmnist_tiny(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A few-thousand-parameter net for tests and quick tries."""
    return ResNetCNN(in_channels, num_classes, (8, 16, 16), dropout=0.0)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a built-in name, ``package.module:factory``, or a TorchScript / torch.export file."""

    model: str
    weights: str | None = None

    @property
    def kind(self) -> str:
        if self.model in _BUILTINS:
            return "builtin"
        if ":" in self.model and not Path(self.model).exists():
            return "factory"
        if self.model.endswith(".pt2"):
            return "exported"
        if self.model.endswith(".json"):
            return "student"
        if self.model.endswith((".pt", ".pth", ".ts", ".torchscript")):
            return "torchscript"
        return "unknown"

    @property
    def needs_training(self) -> bool:
        return self.kind == "builtin" and self.weights is None


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


def build_model(source: ModelSource, in_channels: int, num_classes: int) -> nn.Module:
    """An eval-mode module for ``source`` with its weights loaded (untrained when a built-in has none)."""
    kind = source.kind
    if kind == "builtin":
        model = _BUILTINS[source.model](in_channels=in_channels, num_classes=num_classes)
    elif kind == "factory":
        model = import_callable(source.model)()
    elif kind == "student":
        from .compress.student import load_student

        path = Path(source.model)
        if not path.is_file():
            raise ModelError(f"{path}: student spec not found")
        weights = Path(source.weights) if source.weights else path.with_name("student.pt")
        if not weights.is_file():
            raise ModelError(f"{weights}: student weights not found (pass --weights)")
        return load_student(path, weights)
    elif kind in ("torchscript", "exported"):
        if source.weights:
            raise ModelError(f"{source.weights}: --weights is for factory and built-in models; {source.model} holds its own")
        return _load_serialized(Path(source.model), kind)
    else:
        valid = ", ".join(list_models())
        close = difflib.get_close_matches(source.model, list_models(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ModelError(
            f"{source.model}: unknown model{hint}; give a built-in name ({valid}), package.module:factory, "
            "a TorchScript (.pt) / torch.export (.pt2) file, or a compressed student's .json spec"
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"{source.model}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if source.weights:
        load_state_dict(model, Path(source.weights), source.model)
    return model.eval()


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


def _load_serialized(path: Path, kind: str) -> nn.Module:
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


def check_input(model: nn.Module, input_shape: tuple[int, ...], name: str, num_classes: int) -> None:
    """Run one forward pass so that a model that does not accept the data fails here, clearly."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(input_shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"{name}: does not accept input of shape {list(input_shape)} from the data ({first})") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{name}: output {shape} is not [batch, {num_classes}] logits for the data's {num_classes} classes")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter``: a multiply-add counts as 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(input_shape))
    return int(counter.get_total_flops())
