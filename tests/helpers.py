"""Models for the tests, importable as ``tests.helpers:<factory>``."""
import torch
from torch import nn

from pipeline.nets import fmnist_tiny


def tiny_factory() -> nn.Module:
    return fmnist_tiny(in_channels=1, num_classes=10)


def rgb_net() -> nn.Module:
    """A small 3-channel CNN (onnx2tf treats 4-D 3-channel inputs specially)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def gelu_net() -> nn.Module:
    """GELU, exported as Erf: onnx2tf writes FlexErf unless told to approximate it with builtin ops."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


class FFTNet(nn.Module):
    """Uses a spectral op that the ONNX exporter cannot express."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(28 * 15, 10)

    def forward(self, x):
        return self.head(torch.fft.rfft2(x).abs().flatten(1))


def fft_net() -> nn.Module:
    return FFTNet()


class TorchvisionStyleNet(nn.Module):
    """Laid out like torchvision's MobileNetV2: ``features``, then pooling and flattening in forward(), then a
    ``classifier`` of dropout and a linear layer."""

    def __init__(self):
        super().__init__()
        self.features = fmnist_tiny(in_channels=1, num_classes=10).features
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))  # fmnist_tiny's last width

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def torchvision_style_net() -> nn.Module:
    return TorchvisionStyleNet()


def grouped_conv_block(cin: int, cout: int, stride: int, groups: int) -> nn.Module | None:
    """A user's block factory for the compression search space: a grouped 3x3 convolution (None where the
    channels do not divide into ``groups``)."""
    if cin % groups or cout % groups:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PretrainedCfgNet(nn.Module):
    """A small RGB net that carries its evaluation preprocessing the way timm models do (``pretrained_cfg``)."""

    def __init__(self):
        super().__init__()
        self.body = rgb_net()
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 32, 32),
                               "crop_pct": 0.8, "interpolation": "bicubic"}

    def forward(self, x):
        return self.body(x)


def pretrained_cfg_net() -> nn.Module:
    return PretrainedCfgNet()


def five_class_net() -> nn.Module:
    """A small RGB net with five outputs, for data that holds a few of its classes."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


class ResidualThenDepthwiseNet(nn.Module):
    """The built-in student's layout: a residual block (its Add's output reaches onnx2tf in NCHW), then a separable
    block whose depthwise convolution reads it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.shortcut = nn.Conv2d(8, 16, 1, 2)
        self.separable = nn.Sequential(nn.Conv2d(16, 16, 5, 2, 2, groups=16), nn.ReLU(), nn.Conv2d(16, 24, 1),
                                       nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.separable(torch.relu(self.body(x) + self.shortcut(x))))


class PNet(nn.Module):
    """MTCNN's proposal network (Zhang et al., 2016) laid out as facenet-pytorch 2.6 names its state dict, so that its
    published weights (``facenet_pytorch/data/pnet.pt``, shipped in the wheel) load as they are: a fully
    convolutional face detector giving box regressions [1, 4, H', W'] and face probabilities [1, 2, H', W'] for
    the 12 x 12 windows at stride 2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.softmax4_1 = nn.Conv2d(32, 2, 1), nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


def pnet() -> nn.Module:
    return PNet()


YUNET_STRIDES = (8, 16, 32)


def decode_yunet(outputs: list, input_hw: tuple, options: dict) -> tuple:
    """A user's decoder (``detect: {decoder: "tests.helpers:decode_yunet"}``) for OpenCV's YuNet face detector, whose
    12 outputs are, per stride 8, 16, 32: class and objectness scores [1, N, 1] (after sigmoid), box offsets [1, N, 4]
    (centre in cells from the cell's corner, log size in cells) and landmarks [1, N, 10] (unused), in the order
    cls_*, obj_*, bbox_*, kps_*: boxes x1, y1, x2, y2 in [0, 1] and scores (N, 1) as OpenCV's FaceDetectorYN computes
    them (the geometric mean of the two scores)."""
    import numpy as np

    height, width = input_hw
    boxes, scores = [], []
    for level, stride in enumerate(YUNET_STRIDES):
        cls, obj, box = (np.asarray(outputs[level + 3 * k], np.float32)[0] for k in range(3))
        cols = width // stride
        cells = np.arange(len(box))
        cx, cy = (cells % cols + box[:, 0]) * stride, (cells // cols + box[:, 1]) * stride
        w, h = np.exp(box[:, 2]) * stride, np.exp(box[:, 3]) * stride
        boxes.append(np.stack([(cx - w / 2) / width, (cy - h / 2) / height, (cx + w / 2) / width,
                               (cy + h / 2) / height], axis=1))
        scores.append(np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1)))
    return np.concatenate(boxes), np.concatenate(scores)
