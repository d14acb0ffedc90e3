"""The model-source registry: one row per way a user can give a model (a built-in name, a factory, a file).

A row says how to recognise its kind of ``--model``, how to load it as an eval-mode ``nn.Module``, whether the
pipeline trains it, whether the model step keeps a state_dict to rebuild it, which artifact kind is the
reference every other artifact is measured against, and the preprocessing the model carries, if any.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from board_runtime.registry import Registry, did_you_mean

from ..errors import ModelError


@dataclass(frozen=True)
class ModelSource:
    """What the user gave: ``--model`` and, for the kinds that take one, ``--weights``."""

    model: str
    weights: str | None = None

    @property
    def row(self) -> "SourceKind":
        return resolve(self.model)

    @property
    def kind(self) -> str:
        return self.row.name

    @property
    def needs_training(self) -> bool:
        return self.row.trainable and self.weights is None


@dataclass(frozen=True)
class SourceKind:
    name: str
    matches: Callable[[str], bool]  # does this ``--model`` value belong to this kind?
    load: Callable[[ModelSource, int, int], object]  # (source, in_channels, num_classes) -> eval-mode nn.Module
    usage: str  # how a user names such a model, for the error that lists every kind
    trainable: bool = False  # without --weights, the pipeline trains it
    keeps_weights: bool = False  # the model step saves its state_dict, and rebuilds it from source + weights
    reference_kind: str = "torch-fp32"  # the artifact every other one is compared with
    framework: str = "torch"  # what the model step makes of it: torch (a module, traced), onnx or tflite (the file)
    derives: bool = True  # the other artifact kinds can be made from it (not from a .tflite)
    # The preprocessing the model carries, as (options, where from), or None: read before the data, whose image
    # files it may resize and crop.
    preprocessing: Callable[[ModelSource], tuple[Any, str] | None] = lambda source: None
    # The static (H, W) of a model file's image input, or None: what a detector's images are letterboxed to when the
    # configuration gives no size.
    input_hw: Callable[[ModelSource], tuple[int, int] | None] = lambda source: None
    # What a model file says about itself (``model_card.ModelCard``: task, decoder, classes, input size,
    # preprocessing), or None; the configuration takes precedence.
    card: Callable[[ModelSource], Any | None] = lambda source: None
    # The target profiles' FLOPs, parameter and model-size budgets apply to it by default: they are sized for the
    # built-in networks; a user's model is judged against the budget the user gives.
    profile_budgets: bool = False


SOURCES: Registry[SourceKind] = Registry("model source")


def register_source(row: SourceKind) -> SourceKind:
    return SOURCES.register(row.name, row)


def resolve(model: str) -> SourceKind:
    """The first registered kind that recognises ``model``; else a one-line error naming every kind."""
    for row in SOURCES.values():
        if row.matches(model):
            return row
    from ..nets import list_builtins

    raise ModelError(f"{model}: unknown model{did_you_mean(model, list_builtins())}; give "
                     + ", ".join(row.usage for row in SOURCES.values()))


def not_a_module(what: str) -> Callable[[ModelSource, int, int], object]:
    """The ``load`` of a source that is a file for another framework: a one-line error where a module is needed."""
    def load(source: ModelSource, in_channels: int, num_classes: int):
        raise ModelError(f"{source.model}: {what} is not a PyTorch module; this step needs one")

    return load


def build_model(source: ModelSource, in_channels: int, num_classes: int):
    """An eval-mode module for ``source`` with its weights loaded (untrained when a built-in has none)."""
    return source.row.load(source, in_channels, num_classes)
