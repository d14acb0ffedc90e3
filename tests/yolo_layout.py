"""A detector laid out as Ultralytics' YOLOv8 detect head exports it (random weights, built here): three levels at
strides 8, 16 and 32, a box branch of 4 x 16 distribution bins (DFL) and a class branch per level, decoded in the graph
to one output [1, 4 + C, N] (centre x, y, width, height in input pixels, then sigmoid class scores), or, with
``tflite_boxes``, boxes divided by the input size as Ultralytics' TFLite and Edge TPU exports do, or, with
``end2end``, the ``end2end`` best anchors as rows [1, end2end, 6] (x1, y1, x2, y2 in input pixels, score, class), as
end-to-end heads (``nms=True`` exports, YOLOv10, YOLO26) give them. The widths are
YOLOv8n's (64, 128, 256 channels at the three levels; a class branch of max(64, C) channels), so that at 640 x 640
with 80 classes a level holds tensors whose channels, height and width are all 80, as the real one does."""
from __future__ import annotations

import torch
from torch import nn

BINS = 16  # Ultralytics' reg_max


def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2), nn.SiLU())


class C2f(nn.Module):
    """Ultralytics' C2f: a 1x1 convolution split in two halves, a bottleneck on the second, all three concatenated."""

    def __init__(self, channels: int):
        super().__init__()
        self.cv1, self.cv2 = conv(channels, channels, 1), conv(3 * channels // 2, channels, 1)
        self.bottleneck = nn.Sequential(conv(channels // 2, channels // 2), conv(channels // 2, channels // 2))

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, b, b + self.bottleneck(b)], 1))


class DFL(nn.Module):
    """Box side distances as the expectation of a softmax over ``BINS`` bins (a fixed 1x1 convolution)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(BINS, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(BINS, dtype=torch.float).view(1, BINS, 1, 1)

    def forward(self, x):
        batch, _, anchors = x.shape
        return self.conv(x.view(batch, 4, BINS, anchors).transpose(2, 1).softmax(1)).view(batch, 4, anchors)


class YoloLayout(nn.Module):
    def __init__(self, num_classes: int = 80, tflite_boxes: bool = False, end2end: int = 0):
        super().__init__()
        self.end2end = end2end
        widths, self.strides = (64, 128, 256), (8, 16, 32)
        self.num_classes, self.tflite_boxes = num_classes, tflite_boxes
        self.stem = nn.Sequential(conv(3, 16, 3, 2), conv(16, 32, 3, 2), conv(32, 64, 3, 2), C2f(64))
        self.down = nn.ModuleList([nn.Sequential(conv(64, 128, 3, 2), C2f(128)),
                                   nn.Sequential(conv(128, 256, 3, 2), C2f(256))])
        box, cls = max(16, widths[0] // 4, 4 * BINS), max(widths[0], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(conv(w, box), conv(box, box), nn.Conv2d(box, 4 * BINS, 1))
                                 for w in widths)
        self.cls = nn.ModuleList(nn.Sequential(conv(w, cls), conv(cls, cls), nn.Conv2d(cls, num_classes, 1))
                                 for w in widths)
        self.dfl = DFL()

    def forward(self, x):
        height, width = x.shape[2:]
        levels = [self.stem(x)]
        for down in self.down:
            levels.append(down(levels[-1]))
        heads = [torch.cat([box(level), cls(level)], 1) for level, box, cls in zip(levels, self.box, self.cls)]
        flat = torch.cat([h.flatten(2) for h in heads], 2)
        distances, scores = flat.split((4 * BINS, self.num_classes), 1)
        anchors, strides = [], []
        for head, stride in zip(heads, self.strides):
            rows, cols = head.shape[2:]
            ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float32) + 0.5,
                                    torch.arange(cols, dtype=torch.float32) + 0.5, indexing="ij")
            anchors.append(torch.stack([xs, ys]).flatten(1))
            strides.append(torch.full((1, rows * cols), float(stride)))
        anchors, strides = torch.cat(anchors, 1)[None], torch.cat(strides, 1)[None]
        near, far = self.dfl(distances).chunk(2, 1)
        top_left, bottom_right = anchors - near, anchors + far
        if self.end2end:
            corners = (torch.cat([top_left, bottom_right], 1) * strides).transpose(1, 2)
            best, classes = scores.sigmoid().max(1)
            top, index = best.topk(self.end2end, dim=1)
            rows = corners.gather(1, index[..., None].expand(-1, -1, 4))
            return torch.cat([rows, top[..., None], classes.gather(1, index)[..., None].float()], 2)
        boxes = torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], 1) * strides
        if self.tflite_boxes:
            boxes = boxes / torch.tensor([width, height, width, height], dtype=boxes.dtype).view(1, 4, 1)
        return torch.cat([boxes, scores.sigmoid()], 1)


def yolo_layout(num_classes: int = 80, **options) -> nn.Module:
    torch.manual_seed(0)
    return YoloLayout(num_classes, **options).eval()
