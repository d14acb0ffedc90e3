"""The built-in CNNs, by name: ``fmnist-resnet`` (the default teacher) and ``fmnist-tiny``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

BUILTINS: dict[str, Callable[..., nn.Module]] = {}


def register_builtin(name: str):
    def wrap(factory):
        if name in BUILTINS:
            raise ValueError(f"built-in model '{name}' is registered twice")
        BUILTINS[name] = factory
        return factory

    return wrap


def list_builtins() -> list[str]:
    return sorted(BUILTINS)


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


@register_builtin("fmnist-resnet")
def fmnist_resnet(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The default teacher: 0.58M parameters, 74 MFLOPs at 28x28; over-parameterised on purpose."""
    return ResNetCNN(in_channels, num_classes, (32, 64, 128, 128))


@register_builtin("fmnist-tiny")
def fmnist_tiny(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A few-thousand-parameter net for tests and quick tries."""
    return ResNetCNN(in_channels, num_classes, (8, 16, 16), dropout=0.0)
