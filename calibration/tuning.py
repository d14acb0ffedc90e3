"""Quantization-aware weight tuning: the float model's weights trained through the int8 model's own rounding.

Post-training rounding (``weights.py``) chooses each layer's int8 weights to match that layer's float output. It cannot
see the activations' rounding: on EfficientNet-Lite the stem's ReLU6 output, rounded to 8 bits, alone causes a third
to a half of the logits' int8 noise, and no choice of that layer's weights removes it. Training the whole network's
weights with every quantized tensor rounded as the int8 model rounds it (ONNX Runtime's QDQ placement and scales, the
converters' per-channel weight grid; straight-through gradients), against the float model's logits on the
calibration samples, lets the layers after such a tensor learn to average its noise away (quantization-aware
training, used as a short distillation, Jacob et al. 2018).

The ONNX graph itself is what is trained: each node runs as the torch op it names, so any CNN the exporter and the
quantizer take can be tuned, whatever framework made it. The result is a ``ChosenWeights`` on the converters' grid, so
ONNX int8, TFLite int8 and the Coral model all carry it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .runs import sqnr_db
from .weights import ChosenWeights, Int8Granularity, Layer, find_layers, grid_scale

BATCH = 16  # samples per step
# Input pixels per forward and backward pass: a step's samples go through in micro-batches of at most this many pixels,
# their gradients summed (the same step). Every fake-quantized tensor of the graph is kept for the backward pass:
# NudeNet's YOLOv8n at 320 x 320 peaked at 10.8 GB with all 16 samples at once (benchmarks/tuning_memory.py).
MICRO_BATCH_PIXELS = 4 * 320 * 320
LEARNING_RATE = 3e-5  # Adam's, cosine-annealed: a few int8 steps of a typical weight over the run
CHECKPOINTS = 10  # held-out measurements along the run; the best is kept
PARITY_SAMPLES = 4  # held-out samples the torch run of the graph is checked on against ONNX Runtime's
PARITY_DB = 40.0  # float32 ops in another order differ by far less; a wrong op by far more


def _conv(x, w, b=None, *, dilations=(1, 1), group=1, pads=(0, 0, 0, 0), strides=(1, 1), **_):
    import torch.nn.functional as F

    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x, pads = F.pad(x, (left, right, top, bottom)), (0, 0, 0, 0)
    return F.conv2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(dilations), group)


def _gemm(a, b, c=None, *, transA=0, transB=0, alpha=1.0, beta=1.0, **_):
    a = a.T if transA else a
    out = alpha * (a @ (b.T if transB else b))
    return out if c is None else out + beta * c


def _clip(x, low=None, high=None, **_):
    return x.clamp(None if low is None else float(low), None if high is None else float(high))


def _reshape(x, shape, **_):
    shape = [int(s) for s in shape.tolist()]
    if shape and shape[0] == 1:  # exported for one sample: the graph runs on a batch of them here
        shape[0] = x.shape[0]
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _slice(x, starts, ends, axes=None, steps=None, **_):
    """ONNX Slice with its starts, ends, axes and steps as tensors (a detector's head split into boxes and scores)."""
    index = [slice(None)] * x.dim()
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(axes)
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps):
        size = x.shape[axis]
        index[axis] = slice(max(-size, min(int(start), size)), max(-size - 1, min(int(end), size)), int(step))
    return x[tuple(index)]


def _split(x, split=None, *, axis=0, num_outputs, **_):
    """ONNX Split (a YOLO C2f block's two halves, its head's boxes and scores): sizes as an input (opset 13 on) or
    an attribute (before), else ``num_outputs`` parts as equal as ONNX makes them (the last one smaller)."""
    import torch

    if split is None:
        return torch.split(x, -(-x.shape[axis] // num_outputs), axis)
    return torch.split(x, [int(v) for v in (split.tolist() if hasattr(split, "tolist") else split)], axis)


def _resize(x, roi=None, scales=None, sizes=None, *, mode=b"nearest", coordinate_transformation_mode=b"half_pixel",
            **_):
    """ONNX Resize of an NCHW map (a detector's feature pyramid upsampled): nearest as torch rounds (asymmetric,
    floor: ONNX's other nearest modes agree at integer scales), linear with half-pixel or aligned corners; the
    tuning's parity check against ONNX Runtime catches a mode that differs."""
    import torch.nn.functional as F

    size = [int(v) for v in sizes.tolist()[2:]] if sizes is not None and sizes.numel() else None
    factor = None if size else [float(v) for v in scales.tolist()[2:]]
    if mode == b"nearest":
        return F.interpolate(x, size=size, scale_factor=factor, mode="nearest")
    aligned = coordinate_transformation_mode == b"align_corners"
    return F.interpolate(x, size=size, scale_factor=factor, mode="bilinear", align_corners=aligned)


def _flatten(x, *, axis=1, **_):
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _op_table():
    import torch
    import torch.nn.functional as F

    return {
        "Conv": _conv, "Gemm": _gemm, "MatMul": lambda a, b, **_: a @ b, "Clip": _clip,
        "Relu": lambda x, **_: F.relu(x), "Sigmoid": lambda x, **_: torch.sigmoid(x),
        "PRelu": lambda x, slope, **_: torch.where(x >= 0, x, x * slope),
        "HardSigmoid": lambda x, *, alpha=0.2, beta=0.5, **_: (alpha * x + beta).clamp(0, 1),
        "HardSwish": lambda x, **_: F.hardswish(x),
        "Add": lambda a, b, **_: a + b, "Sub": lambda a, b, **_: a - b, "Mul": lambda a, b, **_: a * b,
        "Div": lambda a, b, **_: a / b,
        "GlobalAveragePool": lambda x, **_: x.mean((2, 3), keepdim=True),
        "AveragePool": lambda x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0,
        **_: F.avg_pool2d(x, tuple(kernel_shape), tuple(strides or kernel_shape), tuple(pads[:2]), bool(ceil_mode),
                          bool(count_include_pad)),
        "MaxPool": lambda x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, dilations=(1, 1), **_:
        F.max_pool2d(x, tuple(kernel_shape), tuple(strides or kernel_shape), tuple(pads[:2]), tuple(dilations),
                     bool(ceil_mode)),
        "Reshape": _reshape, "Flatten": _flatten, "Identity": lambda x, **_: x, "Slice": _slice, "Resize": _resize,
        "Transpose": lambda x, *, perm, **_: x.permute(*perm),
        "Concat": lambda *xs, axis, **_: torch.cat(xs, axis),
        "Softmax": lambda x, *, axis=-1, **_: torch.softmax(x, axis), "Split": _split,
    }


class CannotTune(ValueError):
    """Why a model's weights cannot be tuned here (its int8 weights are then GPTQ's)."""


@dataclass(frozen=True)
class ActivationGrid:
    """How the int8 model rounds one tensor: ``q = clamp(round(x / scale) + zero_point, low, high)``."""

    scale: float
    zero_point: int
    low: int
    high: int


def activation_grids(qdq_path: Path) -> dict[str, ActivationGrid]:
    """The tensors an int8 QDQ model rounds (the inputs of its QuantizeLinear nodes that are not weights), with their
    scales: where, and how, the tuned model rounds its activations."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    grids = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        point = constants[node.input[2]]
        info = np.iinfo(point.dtype)
        grids[node.input[0]] = ActivationGrid(float(constants[node.input[1]]), int(point), info.min, info.max)
    return grids


def _grid_rows(weight, layer: Layer, per_channel: bool):
    """``weight`` as rows of one scale each (output channels, or one row per tensor), with the converters' scales and
    live rows, and a function giving such rows back in the weight's own layout."""
    matrix = weight.T if layer.transposed else weight
    rows = matrix.reshape(matrix.shape[0] if per_channel else 1, -1)
    scale, live = grid_scale(rows.detach().abs().amax(1, keepdim=True))

    def back(values):
        values = values.reshape(matrix.shape)
        return values.T if layer.transposed else values

    return rows, scale, live, back


def _round_weight(weight, layer: Layer, per_channel: bool):
    """``weight`` on the converters' symmetric int8 grid (per output channel or per tensor), with a straight-through
    gradient; the scale follows the weight as it trains."""
    import torch

    rows, scale, live, back = _grid_rows(weight, layer, per_channel)
    return back(rows + (torch.round(rows / scale) * scale * live - rows).detach())


class GraphModule:
    """An ONNX graph run node by node in torch, its layers' weights and biases trainable. With ``grids``, every tensor
    they name is rounded as the int8 model rounds it, and every layer's weight is on the converters' int8 grid."""

    def __init__(self, model, grids: dict[str, ActivationGrid] | None = None,
                 granularity: Int8Granularity = Int8Granularity.PER_CHANNEL):
        import torch
        from onnx import helper, numpy_helper

        self.grids, self.granularity = grids or {}, granularity
        self.layers = {layer.weight: layer for layer in find_layers(model).values()}
        trained = set(self.layers) | {layer.bias for layer in self.layers.values() if layer.bias}
        self.values, self.trained = {}, {}
        for init in model.graph.initializer:
            array = torch.from_numpy(numpy_helper.to_array(init).copy())
            if init.name in trained:
                array = self.trained[init.name] = torch.nn.Parameter(array)
            self.values[init.name] = array
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.values[node.output[0]] = torch.from_numpy(numpy_helper.to_array(node.attribute[0].t).copy())
        # a node's outputs, and its attributes (a Split's number of parts among them, which opsets before 18 give
        # by its outputs only)
        self.nodes = [(node.op_type, list(node.input), list(node.output),
                       {a.name: helper.get_attribute_value(a) for a in node.attribute}
                       | ({"num_outputs": len(node.output)} if node.op_type == "Split" else {}))
                      for node in model.graph.node if node.op_type != "Constant"]
        self.ops = _op_table()
        unknown = sorted({op for op, *_ in self.nodes} - set(self.ops))
        if unknown:
            raise CannotTune(f"no torch op here for {', '.join(unknown)}")
        self.input = next(i.name for i in model.graph.input if i.name not in self.values)
        self.outputs = [o.name for o in model.graph.output]

    def _round(self, name: str, x):
        import torch

        grid = self.grids.get(name)
        if grid is None:
            return x
        return torch.fake_quantize_per_tensor_affine(x, grid.scale, grid.zero_point, grid.low, grid.high)

    def __call__(self, x):
        import torch

        env = dict(self.values)
        env[self.input] = self._round(self.input, x)
        for op, inputs, outputs, attrs in self.nodes:
            args = [env[name] if name else None for name in inputs]
            if self.grids and len(inputs) > 1 and inputs[1] in self.layers:
                layer = self.layers[inputs[1]]
                args[1] = _round_weight(args[1], layer, self.granularity.per_channel(layer.op))
            values = self.ops[op](*args, **attrs)
            for output, value in zip(outputs, values if len(outputs) > 1 else [values]):
                env[output] = self._round(output, value)
        # every output, flattened side by side: a detector's boxes and scores are both matched
        return torch.cat([env[name].flatten(1) for name in self.outputs], dim=1)

    def state(self) -> dict:
        return {name: value.detach().clone() for name, value in self.trained.items()}

    def chosen_weights(self, state: dict, num_samples: int) -> ChosenWeights:
        """The weights of ``state`` on the converters' grid, and its biases."""
        import torch

        values, scales, biases = {}, {}, {}
        for name, layer in self.layers.items():
            rows, scale, live, back = _grid_rows(state[name], layer, self.granularity.per_channel(layer.op))
            values[name] = back((torch.round(rows / scale) * live).to(torch.int8)).contiguous().numpy()
            scales[name] = scale.reshape(-1).numpy().astype(np.float32)
            if layer.bias:
                biases[name] = state[layer.bias].numpy().astype(np.float32)
        return ChosenWeights(values, scales, biases, num_samples)


@dataclass(frozen=True)
class TuningResult:
    """The tuned weights (None where tuning did not beat its start on the held-out samples) and what was measured:
    the rounded graph's output SQNR against the float model's on the held-out samples, before and at its best."""

    chosen: ChosenWeights | None
    held_out: int
    start_sqnr_db: float
    best_sqnr_db: float
    best_step: int
    steps: int

    def to_json(self) -> dict:
        return {"held_out": self.held_out, "start_sqnr_db": self.start_sqnr_db, "best_sqnr_db": self.best_sqnr_db,
                "best_step": self.best_step, "steps": self.steps, "kept": self.chosen is not None}


def not_tuned(reason: CannotTune) -> dict:
    """The tuning record of a model that could not be tuned."""
    return {"skipped": str(reason), "kept": False}


def tune_weights(reference_path: Path, model_path: Path, qdq_path: Path, inputs: np.ndarray, steps: int,
                 granularity: Int8Granularity = Int8Granularity.PER_CHANNEL, seed: int = 0,
                 micro_batch: int | None = None, after_step: Callable[[], None] | None = None) -> TuningResult:
    """``model_path``'s weights and biases trained for ``steps`` Adam steps so that, rounded as ``qdq_path`` (its int8
    model) rounds them, its outputs match ``reference_path``'s (the float model) on ``inputs`` (and their mirror
    images); the last quarter of ``inputs`` is held out and picks the best of the checkpoints taken along the way.
    ``micro_batch``: samples per forward and backward pass (default: ``MICRO_BATCH_PIXELS`` of input);
    ``after_step``: called after every step (the pipeline hands its allocator's freed memory back to the system there:
    jemalloc, which it runs on, otherwise keeps every step's freed pages, 10.8 GB over 80 steps of a YOLOv8n)."""
    import onnx
    import torch
    from tqdm.auto import tqdm

    held_out = max(1, len(inputs) // 4)
    train, judged = inputs[:-held_out], torch.from_numpy(np.array(inputs[-held_out:], np.float32))
    if not len(train):
        raise CannotTune("it needs at least 2 calibration samples")
    teacher = GraphModule(onnx.load(str(reference_path)))
    student = GraphModule(onnx.load(str(model_path)), activation_grids(qdq_path), granularity)
    generator = torch.Generator().manual_seed(seed)
    micro_batch = micro_batch or max(1, min(BATCH, MICRO_BATCH_PIXELS // int(np.prod(inputs.shape[2:]))))
    try:
        with torch.no_grad():
            targets = {flip: torch.cat([teacher(_batch(train, i, flip)) for i in range(0, len(train), BATCH)])
                       for flip in (False, True)}
            judged_target = _batched(teacher, judged)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # an op used in a way not supported here
        raise CannotTune(f"its graph does not run in torch here ({type(exc).__name__}: {str(exc)[:200]})") from None
    _check_parity(reference_path, judged[:PARITY_SAMPLES].numpy(), judged_target[:PARITY_SAMPLES].numpy())

    def sqnr() -> float:
        with torch.no_grad():
            out = _batched(student, judged)
        return sqnr_db(float(judged_target.square().sum()), float((out - judged_target).square().sum()))

    optimizer = torch.optim.Adam(list(student.trained.values()), lr=LEARNING_RATE)
    warmup = max(1, steps // 10)  # Adam's first steps move every weight by the full rate: ramp it up
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / steps))))
    start = best = sqnr()
    best_state, best_step, every = None, 0, max(1, steps // CHECKPOINTS)
    order = torch.empty(0, dtype=torch.long)
    progress = tqdm(range(1, steps + 1), "quantization-aware tuning", unit="step", delay=2.0, leave=False)
    for step in progress:
        if len(order) < BATCH:
            order = torch.cat([order, torch.randperm(len(train), generator=generator)])
        picked, order = order[:BATCH], order[BATCH:]
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        optimizer.zero_grad()
        for part in picked.split(micro_batch):  # the batch's mean squared error, its gradient summed part by part
            target = targets[flip][part]
            loss = torch.nn.functional.mse_loss(student(_batch(train, part.numpy(), flip)), target, reduction="sum")
            (loss / (len(picked) * target[0].numel())).backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
        if step % every == 0 or step == steps:
            score = sqnr()
            if score > best:
                best, best_state, best_step = score, student.state(), step
            progress.set_postfix_str(f"held-out {score:.1f} dB (start {start:.1f})")
    chosen = student.chosen_weights(best_state, len(inputs)) if best_state is not None else None
    return TuningResult(chosen, held_out, start, best, best_step, steps)


def _check_parity(reference_path: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    """Refuse to tune a graph whose run in torch is not ONNX Runtime's (an op attribute not honoured here): the
    tuning would chase wrong targets, and its held-out check, made against the same targets, would not see it."""
    from .runs import ort_session

    session = ort_session(reference_path)
    name = session.get_inputs()[0].name
    expected = np.concatenate([np.concatenate([o.reshape(1, -1) for o in session.run(None, {name: x[None]})], axis=1)
                               for x in inputs]).astype(np.float64)
    parity = sqnr_db(float(np.square(expected).sum()), float(np.square(expected - outputs).sum()))
    if parity < PARITY_DB:
        raise CannotTune(f"its graph run in torch is {parity:.0f} dB from ONNX Runtime's outputs")


def _batched(graph: GraphModule, x):
    """``graph`` on ``x``, BATCH samples at a time."""
    import torch

    return torch.cat([graph(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def _batch(inputs: np.ndarray, picked, flip: bool):
    """Samples ``picked`` (a start index: a batch from there; or indices) as a float tensor, mirrored left-right."""
    import torch

    rows = inputs[picked : picked + BATCH] if isinstance(picked, int) else inputs[picked]
    x = torch.from_numpy(np.array(rows, np.float32))
    return x.flip(-1) if flip else x
