"""The built-in CNNs, by name: ``fmnist-resnet`` (the default teacher), ``fmnist-tiny``, ``fmnist-mobilenetv2`` and
the detector ``fmnist-detector``; each with its task (classify or detect)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from board_runtime.registry import Registry


@dataclass(frozen=True)
class Builtin:
    factory: Callable[..., nn.Module]  # (in_channels=, num_classes=) -> the untrained network
    task: str = "classify"  # classify | detect
    decoder: dict | None = None  # a detector's decoder options (``board_runtime.detection``)


BUILTINS: Registry[Builtin] = Registry("built-in model")


def register_builtin(name: str, task: str = "classify", decoder: dict | None = None):
    def wrap(factory):
        BUILTINS.register(name, Builtin(factory, task, decoder))
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


class MobileNetV2Block(nn.Module):
    """torchvision's ``InvertedResidual`` layout: ``conv`` (1x1 expand unless t=1, 3x3 depthwise, 1x1 linear project),
    a residual where the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) laid out as torchvision's: ``features`` (stem, 17 inverted residuals,
    1x1 to ``last``), then pooling and flattening in ``forward()``, then ``classifier``. ``strides`` are the seven
    stages' (torchvision's are 1, 2, 2, 2, 1, 2, 1 after a stride-2 stem, for 224x224 inputs)."""

    # expansion t, output channels c, repeats n: torchvision's inverted_residual_setting
    SETTING = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, stem_stride: int = 2,
                 strides: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1), last: int = 1280, dropout: float = 0.2):
        super().__init__()
        scale = lambda c: max(8, int(c * width + 4) // 8 * 8)  # noqa: E731  (torchvision's rounding to 8)
        cin = scale(32)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, stem_stride)]
        for (t, c, n), stride in zip(self.SETTING, strides):
            for i in range(n):
                layers.append(MobileNetV2Block(cin, scale(c), stride if i == 0 else 1, t))
                cin = scale(c)
        layers.append(conv_bn_relu6(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)
    )


@register_builtin("fmnist-mobilenetv2")
def fmnist_mobilenetv2(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """MobileNetV2 in torchvision's layout for 28x28 inputs: width 0.5, a stride-1 stem and stages at strides
    1, 1, 2, 2, 1, 2, 1 (28 -> 14 -> 7 -> 4), last 1x1 to 640 channels."""
    return MobileNetV2(in_channels, num_classes, width=0.5, stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1), last=640)


class DenseHead(nn.Module):
    """A dense detector's head on its stride-8 features: a shared convolution, then at every cell the distances from
    the cell's centre to the box's four sides and the class scores from their own convolutions (as YOLOv8's and
    FCOS's heads: each its own int8 scale), decoded in the graph."""

    def __init__(self, width: int, num_classes: int, grid: tuple[int, int], reach: float):
        super().__init__()
        self.shared = conv_bn_relu(width, width)
        self.box, self.score = nn.Conv2d(width, 4, 1), nn.Conv2d(width, num_classes, 1)
        self.reach = reach  # the longest centre-to-side distance it can predict, as a share of the input's side
        rows, cols = grid
        ys, xs = torch.meshgrid(torch.arange(rows) + 0.5, torch.arange(cols) + 0.5, indexing="ij")
        centres = torch.stack([xs / cols, ys / rows], dim=-1).reshape(1, -1, 2)
        self.register_buffer("centres", torch.cat([centres, centres], dim=-1), persistent=False)
        self.register_buffer("signs", torch.tensor([-1.0, -1.0, 1.0, 1.0]), persistent=False)
        with torch.no_grad():  # start with rare scores: the loss is not swamped by the empty cells
            self.score.bias.fill_(-4.0)

    def raw(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs before activation: distances to the four sides [B, N, 4], class scores [B, N, C]."""
        shared = self.shared(features)
        return self.box(shared).flatten(2).transpose(1, 2), self.score(shared).flatten(2).transpose(1, 2)

    def decode(self, distances: torch.Tensor) -> torch.Tensor:
        """Distances before activation -> boxes x1, y1, x2, y2 in [0, 1] of the input."""
        return self.centres + self.signs * torch.sigmoid(distances) * self.reach

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances, scores = self.raw(features)
        # clamped to the image, so that a full-integer model's boxes output spends its 256 steps on [0, 1] alone
        return self.decode(distances).clamp(0.0, 1.0), torch.sigmoid(scores)


class DenseDetector(nn.Module):
    """An anchor-free one-level detector (FCOS-style): ``features`` (a stride-8 ResNet backbone, cut into blocks like
    the classifiers' for compression) and a ``head`` (``DenseHead``). It gives two outputs, so that neither shares
    the other's int8 scale: ``boxes`` [1, N, 4] (x1, y1, x2, y2 in [0, 1] of the input) and ``scores`` [1, N, C]
    (sigmoid), N = (H / 8) * (W / 8) cells, row-major (``board_runtime.detection``'s boxes-scores decoder)."""

    STRIDE = 8
    OUTPUT_NAMES = ("boxes", "scores")  # as its exports name its outputs

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 48, 64),
                 input_hw: tuple[int, int] = (96, 96), reach: float = 0.75):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, widths[0], 3, 2)]
        for index, width in enumerate(widths[1:]):
            layers.append(BasicBlock(widths[index], width, stride=2 if index < 2 else 1))
        self.features = nn.Sequential(*layers)
        self.head = DenseHead(widths[-1], num_classes, (input_hw[0] // self.STRIDE, input_hw[1] // self.STRIDE), reach)

    @property
    def centres(self) -> torch.Tensor:
        return self.head.centres

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.raw(self.features(x))

    def decode(self, distances: torch.Tensor) -> torch.Tensor:
        return self.head.decode(distances)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))


@register_builtin("fmnist-detector", task="detect", decoder={"decoder": "boxes-scores"})
def fmnist_detector(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The default detector: garments on 96 x 96 canvases (``data.detection.fashion_canvases``)."""
    return DenseDetector(in_channels, num_classes)
