"""The compress step's latency table (``--max-latency-ms``) and where its figures come from (``LATENCY_SOURCES``,
chosen by ``compress.latency_from``): timed on this host with the board runtime's own timing, timed on the board
over SSH (``bench.host``) with the bundle's own runtime in one visit, or estimated from the board's roofline. Each
table is cached per board and source (runtime version and thread count included)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from board_runtime.measure import time_models
from board_runtime.schemas import BUNDLE_SCHEMA

from ..artifacts import sha256_json
from ..compress import options as compress_options
from ..compress.latency import LatencyTable, Measure
from ..config import BenchOptions
from ..errors import ConfigError
from ..estimate import estimate, model_traffic
from ..formats.onnx_fp32 import export_onnx
from ..profile import TargetProfile
from ..torchmodel import count_flops
from ..train import cache_dir
from .bench import board_ssh
from .bundle import copy_runtime, file_hashes


def _exported(models: list, directory: Path, opset: int) -> list[dict]:
    """Each ``(module, input_shape)`` as fp32 ONNX under ``directory/models``: the ``timed_models`` entries."""
    (directory / "models").mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (module, shape) in enumerate(tqdm(models, desc="exporting the latency table's models", unit="model")):
        path = f"models/{index:04d}.onnx"
        export_onnx(module.eval(), shape, directory / path, opset)
        entries.append({"name": str(index), "path": path, "input_shape": list(shape)})
    return entries


def on_this_host(threads: int, opset: int, runs: int = 300, warmup: int = 30, seconds: float = 1.0) -> Measure:
    """Each model exported to fp32 ONNX and its median latency in ms with the board runtime's own timing
    (``board_runtime.measure.time_models``) on this host, at ``threads`` threads: ``runs`` runs after ``warmup``, or
    as many as ``seconds`` allow, so that a 224x224 network's table stays minutes long."""

    def measure(models: list) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            entries = _exported(models, Path(tmp), opset)
            with tqdm(total=len(entries), desc="timing on this host", unit="model") as bar:
                medians = time_models(entries, Path(tmp), threads, runs, warmup, seconds,
                                      lambda _: bar.update(1))["median_ms"]
        return [medians[e["name"]] for e in entries]

    return measure


def on_the_board(options: BenchOptions, target: TargetProfile, log: Callable[[str], None], runs: int = 300,
                 warmup: int = 30, seconds: float = 1.0) -> Measure:
    """Each model exported to fp32 ONNX, sent to the board of ``options.host`` as a bundle of timed models with the
    runtime, and timed there by ``run_model.py time-models`` at the profile's thread count."""
    from ..remote import remote_time_models

    def measure(models: list) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            entries = _exported(models, directory, target.onnx_opset)
            copy_runtime(directory)
            (directory / "manifest.json").write_text(json.dumps(
                {"schema": BUNDLE_SCHEMA, "artifacts": [], "timed_models": entries, "files": file_hashes(directory)}))
            timings = remote_time_models(board_ssh(options), directory, target,
                                         ["--threads", target.threads, "--runs", runs, "--warmup", warmup,
                                          "--max-seconds", seconds], options.timeout_s, log)
        return [timings["median_ms"][e["name"]] for e in entries]

    return measure


def roofline(target: TargetProfile) -> Measure:
    """Each model's roofline estimate for the board (``pipeline.estimate``: its FLOPs and its fp32 ONNX graph's
    traffic against the profile's peaks): an estimate, not a measurement."""
    if target.performance is None or target.performance.peak_gops.fp32 is None:
        raise ConfigError(f"compress.latency_from: bad value 'roofline': {target.source} gives no fp32 peak "
                          "(performance.peak_gops.fp32) to estimate with; valid: host, board")

    def measure(models: list) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            entries = _exported(models, Path(tmp), target.onnx_opset)
            return [estimate("onnx-fp32", count_flops(module, tuple(shape)), model_traffic(Path(tmp) / entry["path"]),
                             target.performance).latency_ms for (module, shape), entry in zip(models, entries)]

    return measure


def _host_table(target: TargetProfile, options: BenchOptions, log) -> LatencyTable:
    import onnxruntime

    threads, version = min(target.threads, os.cpu_count() or 1), onnxruntime.__version__  # more: contention
    return LatencyTable(on_this_host(threads, target.onnx_opset),
                        f"measured on this host: onnxruntime {version} CPU, fp32 ONNX, {threads} threads",
                        cache_dir() / "latency" / f"{target.name}-onnxruntime-{version}-{threads}t.json")


def _board_table(target: TargetProfile, options: BenchOptions, log) -> LatencyTable:
    if not options.host:
        raise ConfigError("compress.latency_from: bad value 'board': no board to time on; give bench.host "
                          "(--host user@board), or choose host or roofline")
    ssh = board_ssh(options)
    cache = f"{target.name}-board-{ssh.destination}-{ssh.port or 22}-{target.threads}t.json"
    return LatencyTable(on_the_board(options, target, log),
                        f"measured on the board {ssh.label}: onnxruntime CPU, fp32 ONNX, {target.threads} threads",
                        cache_dir() / "latency" / cache)


def _roofline_table(target: TargetProfile, options: BenchOptions, log) -> LatencyTable:
    peaks = sha256_json(asdict(target.performance))[:8] if target.performance else "none"  # edited peaks: a new table
    return LatencyTable(roofline(target), f"estimated from {target.name}'s roofline (fp32 peaks; not measured)",
                        cache_dir() / "latency" / f"{target.name}-roofline-{peaks}.json")


LATENCY_SOURCES: dict[str, Callable[[TargetProfile, BenchOptions, Callable], LatencyTable]] = {
    "host": _host_table, "board": _board_table, "roofline": _roofline_table}
assert tuple(LATENCY_SOURCES) == compress_options.LATENCY_SOURCES  # the options validate against these names


def latency_table(source: str, target: TargetProfile, options: BenchOptions, log: Callable[[str], None] = print
                  ) -> LatencyTable:
    """The table for ``target``'s latency budget from ``source`` (a key of ``LATENCY_SOURCES``)."""
    return LATENCY_SOURCES[source](target, options, log)
