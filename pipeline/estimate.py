"""Roofline latency estimates per artifact: what a board's peak compute and memory bandwidth allow.

These are estimates from a profile's ``performance:`` figures, not measurements: they show how far a
measured latency is from what the hardware could do, and whether the model is compute- or memory-bound.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

from .formats import FORMATS
from .errors import ConversionError
from .profile import Performance

METHOD = "roofline (estimated)"
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class ModelTraffic:
    """What one forward pass of the fp32 ONNX model moves, as counted from its graph."""

    parameter_elements: int
    parameter_bytes: int  # initializers at their stored dtype
    activation_elements: int
    activation_bytes: int  # every tensor the graph computes, its input and output included, once each

    def bytes_at(self, precision: str) -> int:
        """Bytes moved by one forward pass at ``precision``: parameters read once, activations twice.

        Each activation tensor is written once and read at least once (the input written by the caller and
        read by the model, the output written by the model and read by the caller), hence 2x. Every element
        takes the precision's size; the few tensors an int8 model keeps wider (int32 biases, a float input
        and output) are ignored.
        """
        size = BYTES_PER_ELEMENT[precision]
        return size * (self.parameter_elements + 2 * self.activation_elements)


@dataclass(frozen=True)
class Estimate:
    kind: str
    latency_ms: float  # max(compute_ms, memory_ms)
    bound: str  # "compute" | "memory": the term that sets latency_ms
    compute_ms: float
    memory_ms: float
    peak_gops: float
    bandwidth_gbs: float
    precision: str
    method: str = METHOD


def _elements(value: onnx.ValueInfoProto, path: Path) -> int:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        raise ConversionError(f"{path.name}: tensor '{value.name}' has no static shape after shape inference")
    return int(np.prod([d.dim_value for d in dims], dtype=np.int64))


def _itemsize(elem_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def model_traffic(onnx_path: str | os.PathLike) -> ModelTraffic:
    """Parameter and activation sizes of an ONNX model with static shapes (the fp32 export)."""
    path = Path(onnx_path)
    graph = shape_inference.infer_shapes(onnx.load(str(path))).graph
    parameters = [(int(np.prod(t.dims, dtype=np.int64)), _itemsize(t.data_type)) for t in graph.initializer]
    initializer_names = {t.name for t in graph.initializer}
    # Keyed by name, so that a tensor listed twice (an output also in value_info) counts once. Older exporters
    # also list initializers among the graph inputs; those are parameters, not activations.
    tensors = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output) if v.name not in initializer_names}
    # Shape inference leaves out what it cannot infer; a missing tensor would silently shrink the count.
    uninferred = {name for node in graph.node for name in node.output if name} - tensors.keys()
    if uninferred:
        raise ConversionError(f"{path.name}: shape inference gave no shape for {', '.join(sorted(uninferred))}")
    activations = [(_elements(v, path), _itemsize(v.type.tensor_type.elem_type)) for v in tensors.values()]
    return ModelTraffic(
        parameter_elements=sum(n for n, _ in parameters),
        parameter_bytes=sum(n * size for n, size in parameters),
        activation_elements=sum(n for n, _ in activations),
        activation_bytes=sum(n * size for n, size in activations),
    )


def estimate(kind: str, flops: int, traffic: ModelTraffic, performance: Performance) -> Estimate | None:
    """Roofline latency of one inference of artifact ``kind``: max(flops / peak, bytes / bandwidth).

    Assumptions: batch 1; the board's peak throughput at the artifact's precision is reached; every
    parameter and activation goes to and from memory at peak bandwidth with no caching (``bytes_at``);
    compute and memory traffic overlap fully. It is meant as a lower bound to set beside the measured
    latency, not a prediction: real kernels reach a fraction of peak. Runtimes that fuse operators (Conv
    with ReLU) never store some of the tensors counted here, so a memory-bound figure can overstate.
    ``flops`` counts a multiply-add as 2 operations (``pipeline.torchmodel.count_flops``), as the peaks do.

    Returns None when the profile has no peak for the artifact's precision.
    """
    if kind not in FORMATS:
        raise ValueError(f"unknown artifact kind '{kind}'; valid kinds: {', '.join(FORMATS)}")
    precision = FORMATS[kind].precision
    peak_gops = getattr(performance.peak_gops, precision)
    if peak_gops is None:
        return None
    compute_ms = flops / (peak_gops * 1e9) * 1e3
    memory_ms = traffic.bytes_at(precision) / (performance.memory_bandwidth_gbs * 1e9) * 1e3
    return Estimate(
        kind=kind,
        latency_ms=max(compute_ms, memory_ms),
        bound="compute" if compute_ms >= memory_ms else "memory",
        compute_ms=compute_ms,
        memory_ms=memory_ms,
        peak_gops=peak_gops,
        bandwidth_gbs=performance.memory_bandwidth_gbs,
        precision=precision,
    )


def estimate_all(
    kinds: Iterable[str], flops: int, onnx_path: str | os.PathLike, performance: Performance
) -> list[Estimate]:
    """Estimates for each of ``kinds`` that the profile has a peak for, from the fp32 ONNX model's traffic."""
    traffic = model_traffic(onnx_path)
    estimates = (estimate(kind, flops, traffic, performance) for kind in kinds)
    return [e for e in estimates if e is not None]
