"""The compress step's latency table (``--max-latency-ms``): every candidate block timed on this host with the target's
ONNX runtime, cached per board, runtime version and thread count."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from board_runtime.sessions import OnnxSession

from ..compress.latency import LatencyTable, Measure
from ..formats.onnx_fp32 import export_onnx
from ..profile import TargetProfile
from ..train import cache_dir


def onnxruntime_on_this_host(threads: int, opset: int, runs: int = 300, warmup: int = 30) -> Measure:
    """``measure(module, input_shape)``: the module exported to fp32 ONNX and its median latency in ms with the
    bench's own ONNX Runtime session (``board_runtime``), at ``threads`` threads."""

    def measure(module, input_shape: tuple) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "block.onnx"
            export_onnx(module.eval(), input_shape, path, opset)
            session = OnnxSession(str(path), threads, ["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
            for _ in range(warmup):
                session.run(x)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                session.run(x)
                times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    return measure


def latency_table(target: TargetProfile) -> LatencyTable:
    """The table for ``target``'s budget, measured here: its ONNX opset, its thread count (at most this host's cores)."""
    import onnxruntime

    threads = min(target.threads, os.cpu_count() or 1)
    source = f"measured on this host: onnxruntime {onnxruntime.__version__} CPU, fp32 ONNX, {threads} threads"
    cache = cache_dir() / "latency" / f"{target.name}-onnxruntime-{onnxruntime.__version__}-{threads}t.json"
    return LatencyTable(onnxruntime_on_this_host(threads, target.onnx_opset), source, cache)
