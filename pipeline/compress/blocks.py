"""Student building blocks described by JSON-serialisable specs, and the cutting of a teacher into blocks.

A spec is a dict with a ``type`` and the arguments of its builder; ``build_block(spec)`` makes the
module. Specs make a student rebuildable from its JSON architecture without re-running the search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError
from ..nets import BasicBlock, conv_bn_relu
from ..torchmodel import import_callable


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise (stride), 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


def _inverted(cin: int, cout: int, stride: int, expansion: int, kernel: int, depth: int) -> nn.Module:
    layers = [InvertedResidual(cin, cout, stride, expansion, kernel)]
    layers += [InvertedResidual(cout, cout, 1, expansion, kernel) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


def _separable(cin: int, cout: int, stride: int, kernel: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _low_rank(cin: int, cout: int, stride: int, rank: int) -> nn.Module:
    """A 1x1 convolution factored through ``rank`` channels: (cin + cout) x rank weights instead of cin x cout."""
    return nn.Sequential(
        nn.Conv2d(cin, rank, 1, stride, bias=False), nn.BatchNorm2d(rank),
        nn.Conv2d(rank, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
    )


def is_pointwise(module: nn.Module) -> bool:
    """Whether every convolution of ``module`` is a plain 1x1 one (and it has one): a block that a low-rank 1x1
    can stand in for."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.kernel_size == (1, 1) and m.groups == 1 for m in convs)


class ReducedBasicBlock(BasicBlock):
    """A ResNet basic block whose inner width is ``mid`` instead of ``cout``."""

    def __init__(self, cin: int, cout: int, stride: int, mid: int):
        super().__init__(cin, cout, stride)
        self.body = nn.Sequential(
            conv_bn_relu(cin, mid, 3, stride), nn.Conv2d(mid, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "identity": lambda **_: nn.Identity(),
    "conv_bn_relu": lambda cin, cout, stride, kernel: conv_bn_relu(cin, cout, kernel, stride),
    "basic": lambda cin, cout, stride, mid: ReducedBasicBlock(cin, cout, stride, mid),
    "inverted_residual": _inverted,
    "separable": _separable,
    "low_rank": _low_rank,
}


def build_block(spec: dict[str, Any]) -> nn.Module | None:
    """The module of ``spec``; its type is a name in ``BUILDERS`` or a user's ``package.module:factory``
    (which may return None where it has no block for these shapes)."""
    args = {k: v for k, v in spec.items() if k != "type"}
    if ":" in spec["type"]:
        block = import_callable(spec["type"])(**args)
        if block is not None and not isinstance(block, nn.Module):
            raise ModelError(f"{spec['type']}: the block factory returned {type(block).__name__}, not a torch.nn.Module")
        return block
    if spec["type"] not in BUILDERS:
        raise ModelError(f"unknown block type '{spec['type']}'; known: {', '.join(BUILDERS)} or package.module:factory")
    return BUILDERS[spec["type"]](**args)


@dataclass
class TeacherBlock:
    name: str
    module: nn.Module
    frozen: bool = False


def _pooled_head(model: nn.Module) -> nn.Module:
    # torchvision's MobileNet/EfficientNet/VGG/... pool and flatten in forward(), outside `classifier`
    pool = getattr(model, "avgpool", None)
    return nn.Sequential(pool if isinstance(pool, nn.Module) else nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)


# How a model's output follows from its `features`: the head a student keeps, by name (in the student's spec).
HEADS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "classifier": lambda model: model.classifier,  # classifier(features(x)): the built-in models
    "pool-flatten-classifier": _pooled_head,  # classifier(flatten(pool(features(x)))): torchvision layouts
    "detector-head": lambda model: model.head,  # head(features(x)) -> (boxes, scores): the built-in detector
}


def _outputs(y) -> tuple[torch.Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def find_head(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The name of the head in ``HEADS`` that gives ``model``'s own output from its ``features`` output."""
    _blocks(model)  # the layout errors first
    x = torch.randn(input_shape)
    with torch.no_grad():
        expected, features = _outputs(model.eval()(x)), model.features(x)
        for name, make in HEADS.items():
            try:
                output = _outputs(make(model)(features))
            except (AttributeError, RuntimeError):  # no such head, or e.g. a Linear fed with an unpooled feature map
                continue
            if len(output) == len(expected) and all(o.shape == e.shape and torch.allclose(o, e, rtol=1e-4, atol=1e-5)
                                                    for o, e in zip(output, expected)):
                return name
    raise ModelError(
        f"{type(model).__name__}: cannot cut into blocks: its output is neither classifier(features(x)), "
        "classifier(flatten(avgpool(features(x)))) nor head(features(x)); give it one of these layouts"
    )


def cut_teacher(model: nn.Module, boundaries: list[str] | None = None, frozen: tuple[str, ...] = (),
                head: str = "classifier") -> tuple[list[TeacherBlock], nn.Module]:
    """Split ``model`` into consecutive blocks of its ``features`` sequence and the remaining head.

    ``boundaries`` lists the names (in ``features``) of the modules that start a block; by default every
    child of ``features`` is a block. ``head`` names how the output follows from the features (``HEADS``;
    ``find_head`` tells which one a model uses).
    """
    return _blocks(model, boundaries, frozen), HEADS[head](model)


def _blocks(model: nn.Module, boundaries: list[str] | None = None, frozen: tuple[str, ...] = ()) -> list[TeacherBlock]:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or all(getattr(model, a, None) is None for a in ("classifier", "head")):
        raise ModelError(
            f"{type(model).__name__}: cannot cut into blocks: it has no 'features' nn.Sequential followed by a "
            "'classifier' or a 'head' (list the block boundaries of such a layout in the config)"
        )
    names = [name for name, _ in features.named_children()]
    starts = boundaries or names
    unknown = [b for b in list(starts) + list(frozen) if b not in names]
    if unknown:
        raise ModelError(f"{type(model).__name__}: unknown block name(s) {', '.join(unknown)}; 'features' has: "
                         f"{', '.join(names)}")
    if names[0] not in starts:
        starts = [names[0], *starts]
    blocks = []
    for index, start in enumerate(starts):
        stop = names.index(starts[index + 1]) if index + 1 < len(starts) else len(names)
        members = [features[i] for i in range(names.index(start), stop)]
        module = members[0] if len(members) == 1 else nn.Sequential(*members)
        blocks.append(TeacherBlock(start, module, frozen=start in frozen))
    return blocks
