"""Int8 weights chosen from calibration data, on the grid every converter computes.

ONNX Runtime's QDQ quantizer and the TensorFlow Lite converter quantize weights the same deterministic way:
symmetric int8 per output channel, scale = max |w| / 127, round to nearest. A float weight already on that grid
(``q * scale`` with integer ``q`` in [-127, 127] and max |q| = 127 in every channel) comes out of either converter as
exactly ``q``. So the rounding can be chosen here, from data, and every int8 artifact carries it whatever built it.

Per layer, with the covariance ``H`` of the layer's input patches over the calibration samples, the rounding of each
output channel is chosen column by column to minimise the output error ``dw^T H dw``: each weight is rounded and the
error it leaves is spread over the weights not yet rounded (the optimal-brain-quantization update of GPTQ, Frantar
et al. 2022, with the scale fixed to the converters' one). Then the bias absorbs the mean error (bias correction,
Nagel et al. 2019): ``b' = b + (w - q) . E[patch]``. Layers are handled on the float model's own inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .runs import ort_session, sqnr_db, with_outputs

QMAX = 127  # symmetric int8 weights: [-127, 127] in ONNX Runtime and TFLite alike
DAMPING = 0.01  # of the mean diagonal of H, for the layers whose inputs are (nearly) collinear
DEAD_CHANNEL = 1e-4  # a channel whose largest weight is below this fraction of the layer's is set to 0


class Int8Granularity(str, Enum):
    """Which int8 weights get a scale per output channel. ``per-channel-conv`` is the TensorFlow Lite converter's
    full-integer scheme until 2024 (convolutions per channel, fully connected layers per tensor): the one the Edge TPU
    compiler and NNAPI take. The converter has made fully connected layers per channel too since then."""

    PER_CHANNEL = "per-channel"
    PER_CHANNEL_CONV = "per-channel-conv"
    PER_TENSOR = "per-tensor"

    def per_channel(self, op: str) -> bool:
        """Whether the weight of an ONNX ``op`` (Conv, Gemm or MatMul) has a scale per output channel."""
        return self is Int8Granularity.PER_CHANNEL or (self is Int8Granularity.PER_CHANNEL_CONV and op == "Conv")


@dataclass(frozen=True)
class Layer:
    """A Conv, Gemm or MatMul with a constant weight: what the rounding needs to know about it."""

    node: str
    op: str
    input: str
    weight: str
    bias: str | None
    group: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    transposed: bool = False  # Gemm with transB=0 and MatMul: the weight is (in, out)

    def rows_by_group(self, weight: np.ndarray) -> np.ndarray:
        """The weight as (groups, output channels per group, inputs per output channel)."""
        matrix = weight.T if self.transposed else weight
        return matrix.reshape(self.group, matrix.shape[0] // self.group, -1)

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        matrix = rows.reshape(-1, rows.shape[-1])
        return (matrix.T if self.transposed else matrix).reshape(shape)


@dataclass(frozen=True)
class ChosenWeights:
    """Per layer (by weight initializer name): the int8 values, the per-channel scales and the corrected bias."""

    values: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    num_samples: int

    def save(self, path: Path) -> None:
        arrays = {f"q/{k}": v for k, v in self.values.items()} | {f"s/{k}": v for k, v in self.scales.items()}
        arrays |= {f"b/{k}": v for k, v in self.biases.items()}
        np.savez(path, num_samples=self.num_samples, **arrays)

    @classmethod
    def load(cls, path: Path) -> "ChosenWeights":
        with np.load(path) as data:
            parts = {p: {k[2:]: data[k] for k in data.files if k.startswith(p + "/")} for p in "qsb"}
            return cls(parts["q"], parts["s"], parts["b"], int(data["num_samples"]))


def find_layers(model) -> dict[str, Layer]:
    """The Conv, Gemm and MatMul nodes whose weight is an initializer of their own, by node name."""
    from onnx import helper

    constants = {i.name: len(i.dims) for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in constants \
                or uses[node.input[1]] > 1:  # a shared weight: another layer's rounding would not suit it
            continue
        name, data = node.name or f"{node.op_type}_{index}", node.input[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in constants else None
        if node.op_type == "Conv":
            kernel = tuple(attrs.get("kernel_shape", ()))
            if len(kernel) != 2 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue  # 2-D convolutions with explicit pads: what the networks here use
            layer = Layer(name, "Conv", data, node.input[1], bias, int(attrs.get("group", 1)), kernel,
                          tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("pads", (0, 0, 0, 0))),
                          tuple(attrs.get("dilations", (1, 1))))
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            layer = Layer(name, "Gemm", data, node.input[1], bias, transposed=not attrs.get("transB", 0))
        elif constants[node.input[1]] == 2:  # a batched MatMul's weight has no output channels to round by
            layer = Layer(name, "MatMul", data, node.input[1], None, transposed=True)
        else:
            continue
        layers[layer.node] = layer
    return layers


def _patches(layer: Layer, x):
    """The layer's input as (groups, inputs per output channel, positions), each position one column."""
    import torch

    if layer.op != "Conv":
        x = x.reshape(-1, x.shape[-1])
        return x.T[None]
    top, left, bottom, right = layer.pads
    x = torch.nn.functional.pad(x, (left, right, top, bottom))
    columns = torch.nn.functional.unfold(x, layer.kernel, dilation=layer.dilations, stride=layer.strides)
    batch, depth, positions = columns.shape
    return columns.reshape(batch, layer.group, depth // layer.group, positions).permute(1, 2, 0, 3).reshape(
        layer.group, depth // layer.group, batch * positions)


class _Moments:
    """Running sums of the patches' first and second moments, in float64."""

    def __init__(self):
        self.count, self.first, self.second = 0, None, None

    def add(self, patches) -> None:
        import torch

        patches = patches.to(torch.float64)
        first, second = patches.sum(-1), patches @ patches.transpose(1, 2)
        self.first = first if self.first is None else self.first + first
        self.second = second if self.second is None else self.second + second
        self.count += patches.shape[-1]

    def mean_and_covariance(self):
        mean = self.first / self.count
        return mean, self.second / self.count - mean[:, :, None] * mean[:, None, :]


def layer_moments(model_path: Path, input_name: str, inputs: np.ndarray, layers: dict[str, Layer]) -> dict:
    """Mean and covariance of every layer's input patches over ``inputs`` (one sample at a time, so static-batch
    models work), from the float model itself."""
    import onnx
    import torch

    wanted = sorted({layer.input for layer in layers.values()} - {input_name})
    session = ort_session(with_outputs(onnx.load(str(model_path)), wanted))
    moments = {name: _Moments() for name in layers}
    for sample in tqdm(inputs, "weight rounding: input statistics", unit="sample", delay=2.0, leave=False):
        sample = np.array(sample[None], np.float32)  # also from a read-only mapped file
        values = dict(zip(wanted, session.run(wanted, {input_name: sample}))) if wanted else {}
        values[input_name] = sample
        for name, layer in layers.items():
            moments[name].add(_patches(layer, torch.from_numpy(values[layer.input])))
    return {name: m.mean_and_covariance() for name, m in moments.items()}


def grid_scale(absmax):
    """The converters' int8 scale (max |w| / 127) of rows whose largest |w| is ``absmax`` (a float32 torch tensor),
    and which rows are live. A row far below the layer's largest is zeroed (scale 1; its bias carries it): ONNX
    Runtime raises such a tiny scale until the int32 bias fits, which would change its int8 values, and its output is
    below int8's resolution at the layer's scale anyway."""
    import torch

    live = (absmax >= DEAD_CHANNEL * absmax.max()) & (absmax > 0)
    return torch.where(live, absmax / QMAX, torch.ones_like(absmax)), live


def round_rows(rows, covariance, scales):
    """GPTQ rounding of ``rows`` (groups, channels, inputs) against ``covariance`` (groups, inputs, inputs) on the
    fixed grid ``scales`` (groups, channels, 1); returns the integer values."""
    import torch

    rows = rows.clone()
    depth = rows.shape[-1]
    damp = DAMPING * torch.diagonal(covariance, dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    hessian = covariance + damp[:, None, None] * torch.eye(depth, dtype=covariance.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    upper = torch.linalg.cholesky(inverse, upper=True)
    values = torch.empty_like(rows)
    for i in range(depth):
        column = rows[:, :, i]
        values[:, :, i] = torch.clamp(torch.round(column / scales[..., 0]), -QMAX, QMAX)
        error = (column - values[:, :, i] * scales[..., 0]) / upper[:, i, i][:, None]
        rows[:, :, i + 1:] -= error[..., None] * upper[:, None, i, i + 1:]
    return values


def _keep_scale(q, rows, per_channel: bool) -> None:
    """Make the largest |q| of every channel (per tensor: of the tensor) 127, in place, at the largest weight: a
    converter computes the scale from the largest weight, so a smaller peak would give another scale."""
    import torch

    if per_channel:
        peak = rows.abs().argmax(-1, keepdim=True)
        short = q.abs().amax(-1, keepdim=True) < QMAX
        q.scatter_(-1, peak, torch.where(short, torch.sign(rows.gather(-1, peak)) * QMAX, q.gather(-1, peak)))
    elif q.abs().max() < QMAX:
        peak = int(rows.abs().argmax())
        q.view(-1)[peak] = torch.sign(rows.reshape(-1)[peak]) * QMAX


def choose_weights(model_path: Path, input_name: str, inputs: np.ndarray,
                   granularity: Int8Granularity = Int8Granularity.PER_CHANNEL) -> tuple[ChosenWeights, list[dict]]:
    """The int8 weights of every Conv/Gemm/MatMul, chosen on ``inputs`` (preprocessed, batch first), per output
    channel or per tensor as ``granularity`` has it for the layer's op; and per layer the SQNR of its output with only
    its weights in int8, rounded to nearest and as chosen (from the same input moments: ``dw^T E[p p^T] dw``, and ``dw^T Cov(p) dw`` after bias correction)."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    layers = find_layers(model)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    moments = layer_moments(model_path, input_name, inputs, layers)
    values, scales, biases, table = {}, {}, {}, []
    for name, layer in tqdm(layers.items(), "weight rounding: layers", unit="layer", delay=2.0, leave=False):
        weight = constants[layer.weight]
        grouped = layer.rows_by_group(weight)
        per_channel = granularity.per_channel(layer.op)
        absmax = np.abs(grouped).max(-1, keepdims=True) if per_channel else np.full(
            grouped.shape[:-1] + (1,), np.abs(grouped).max(), np.float32)
        scale, live = grid_scale(torch.from_numpy(absmax))
        scale = scale.numpy()
        rows, grid = torch.from_numpy(grouped.astype(np.float64)), torch.from_numpy(scale.astype(np.float64))
        mean, covariance = moments[name]
        q = round_rows(rows * live, covariance, grid)
        _keep_scale(q, rows * live, per_channel)
        error = rows - q * grid
        shift = (error @ mean[:, :, None])[..., 0].reshape(-1).numpy()  # (groups * channels,)
        has_bias = layer.op != "MatMul" and (layer.bias is None or constants[layer.bias].size == shift.size)
        old_bias = constants[layer.bias].reshape(-1) if layer.bias else np.zeros(shift.shape, np.float32)
        values[layer.weight] = layer.from_rows(q.to(torch.int8).numpy(), weight.shape)
        scales[layer.weight] = scale.reshape(-1) if per_channel else scale.reshape(-1)[:1]
        if has_bias:
            biases[layer.weight] = (old_bias.astype(np.float64) + shift).astype(np.float32).reshape(
                constants[layer.bias].shape if layer.bias else shift.shape)
        second = covariance + mean[:, :, None] * mean[:, None, :]
        power = lambda x, m: float(torch.einsum("grd,gde,gre->", x, m, x))  # noqa: E731
        nearest = rows - torch.clamp(torch.round(rows / grid), -QMAX, QMAX) * grid
        signal = power(rows, second)
        table.append({"layer": name, "op": layer.op, "shape": list(weight.shape),
                      "sqnr_nearest_db": sqnr_db(signal, power(nearest, second)),
                      "sqnr_chosen_db": sqnr_db(signal, power(error, covariance if has_bias else second))})
    return ChosenWeights(values, scales, biases, len(inputs)), table


def apply_weights(model_path: Path, chosen: ChosenWeights, out_path: Path) -> None:
    """The float model with each chosen layer's weight set to ``q * scale`` and its bias corrected (a bias input is
    added where the layer had none)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    layers = {layer.weight: layer for layer in find_layers(model).values()}
    nodes = {node.name or f"{node.op_type}_{index}": node for index, node in enumerate(model.graph.node)}
    initializers = {i.name: i for i in model.graph.initializer}
    for weight_name, q in chosen.values.items():
        layer = layers[weight_name]
        scale = chosen.scales[weight_name]
        grouped = layer.rows_by_group(q.astype(np.float32))
        per_row = np.broadcast_to(scale.reshape(-1), (grouped.shape[0] * grouped.shape[1],))  # one scale: per tensor
        grid = layer.from_rows(grouped * per_row.reshape(grouped.shape[:-1] + (1,)), q.shape)
        initializers[weight_name].CopyFrom(numpy_helper.from_array(grid.astype(np.float32), weight_name))
        if weight_name not in chosen.biases:
            continue
        bias = chosen.biases[weight_name]
        if layer.bias:
            initializers[layer.bias].CopyFrom(numpy_helper.from_array(bias, layer.bias))
        else:
            name = f"{weight_name}.corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array(bias, name))
            nodes[layer.node].input.append(name)
    onnx.save(model, str(out_path))


def weights_kept(chosen: ChosenWeights, found: list[np.ndarray], layout: str) -> tuple[int, int]:
    """How many chosen layers' int8 values are among the ``found`` int8 tensors exactly: (kept, chosen).
    ``layout`` "onnx" compares as stored; "tflite" as the converter lays weights out (Conv [O, kh, kw, I],
    depthwise [1, kh, kw, C], fully connected [O, I])."""
    def layouts(q: np.ndarray) -> list[np.ndarray]:
        if layout == "onnx":
            return [q]
        if q.ndim == 4:  # a (C, 1, kh, kw) weight is depthwise's [1, kh, kw, C] or a 1-channel Conv's [C, kh, kw, 1]
            return [q.transpose(0, 2, 3, 1)] + ([q.transpose(1, 2, 3, 0)] if q.shape[1] == 1 else [])
        return [q, q.T] if q.ndim == 2 else [q]  # a MatMul's or transB=0 Gemm's weight is (in, out)

    present = {(a.shape, a.tobytes()) for a in found if a.dtype == np.int8}
    kept = sum(any((c.shape, np.ascontiguousarray(c).tobytes()) in present for c in layouts(q))
               for q in chosen.values.values())
    return kept, len(chosen.values)
