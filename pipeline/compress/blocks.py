"""Student building blocks described by JSON-serialisable specs, and the cutting of a teacher into blocks.

A spec is a dict with a ``type`` and the arguments of its builder; ``build_block(spec)`` makes the
module. Specs make a student rebuildable from its JSON architecture without re-running the search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ModelError
from ..models import BasicBlock, conv_bn_relu


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
}


def build_block(spec: dict[str, Any]) -> nn.Module:
    args = {k: v for k, v in spec.items() if k != "type"}
    if spec["type"] not in BUILDERS:
        raise ModelError(f"unknown block type '{spec['type']}'; known: {', '.join(BUILDERS)}")
    return BUILDERS[spec["type"]](**args)


@dataclass
class TeacherBlock:
    name: str
    module: nn.Module
    frozen: bool = False


def cut_teacher(model: nn.Module, boundaries: list[str] | None = None, frozen: tuple[str, ...] = ()) -> tuple[list[TeacherBlock], nn.Module]:
    """Split ``model`` into consecutive blocks of its ``features`` sequence and the remaining head.

    ``boundaries`` lists the names (in ``features``) of the modules that start a block; by default every
    child of ``features`` is a block. The model must compute ``head(features(x))``.
    """
    features = getattr(model, "features", None)
    head = getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential) or head is None:
        raise ModelError(
            f"{type(model).__name__}: cannot cut into blocks: it has no 'features' nn.Sequential followed by a "
            "'classifier' (list the block boundaries of such a layout in the config)"
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
    return blocks, head
