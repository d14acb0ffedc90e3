"""Measuring on the board: latency of one artifact in this process, repeats in fresh processes, the machine.

``bench`` times one artifact (load, first inference, warm-up, then up to ``runs`` timed inferences or
``max_seconds``); ``time_models`` gives the median latency of each of many fp32 ONNX models (the compress step's
latency table, on the board); ``bench_all`` runs ``bench`` for every artifact ``repeats`` times, each a fresh process
(clean peak memory, no shared warm-up), and gives the median of the repeats' statistics, flagging an artifact
as noisy when its repeats' medians spread wider than ``noise_threshold``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .model import Model, find_artifact, load_manifest
from .schemas import PROBE_SCHEMA, RESULT_SCHEMA, SUITE_SCHEMA, TIMINGS_SCHEMA
from .sessions import TFLITE_RUNTIMES, OnnxSession, edgetpu_library, package_version

PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the bundle (or checkout) that holds this package


def _rss_mb() -> float:
    """Current resident memory of this process (Linux), in MiB; 0 where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    Linux's VmHWM belongs to this program alone; ru_maxrss would also count the parent's memory
    copied by fork before exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def conditions() -> dict:
    """What changes during a run and moves latency: temperatures, clock governor, clock frequencies."""
    found: dict = {}
    temps = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        value, kind = _read(str(zone / "temp")), _read(str(zone / "type"))
        if value and value.lstrip("-").isdigit():
            temps[kind or zone.name] = int(value) / 1000
    if temps:
        found["temperature_c"] = temps
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        found["governor"] = governor
    freqs = [_read(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq") for i in range(os.cpu_count() or 1)]
    freqs = [int(f) / 1000 for f in freqs if f and f.isdigit()]
    if freqs:
        found["cpu_mhz"] = {"min": min(freqs), "max": max(freqs)}
    try:  # Raspberry Pi firmware: non-zero bits mean under-voltage or throttling happened
        done = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
        if done.returncode == 0:
            found["throttled"] = done.stdout.strip().split("=")[-1]
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def emulation(machine: str, cpuinfo: str) -> str | None:
    """How this machine is emulated, or None: an Arm userland under qemu-user reports an Arm machine while the
    kernel's /proc/cpuinfo still describes the x86 host (vendor_id), which no Arm kernel writes."""
    arm = machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("armv")
    x86_host = re.search(r"^vendor_id\s*:\s*(GenuineIntel|AuthenticAMD)", cpuinfo, re.MULTILINE)
    return f"qemu-user on an x86-64 host ({x86_host.group(1)})" if arm and x86_host else None


def system_info() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "release": platform.release(),
            "python": platform.python_version(), "cores": os.cpu_count()}
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("model name", "hardware")):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    emulated = emulation(info["machine"], cpuinfo)
    if emulated:
        info["emulated"] = emulated
    model = _read("/proc/device-tree/model")  # boards: "Raspberry Pi 4 Model B Rev 1.4"
    if model:
        info["board"] = model.rstrip("\x00")
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return {**info, **conditions()}


def probe() -> dict:
    """This machine and the runtimes it has (name -> version, None when absent), without loading models."""
    present = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
    runtimes = {name: (package_version(dist) if present(module.split(".")[0]) else None)
                for module, name, dist in TFLITE_RUNTIMES}
    runtimes["onnxruntime"] = runtimes["onnxruntime-cuda"] = None
    providers = []
    if present("onnxruntime"):
        import onnxruntime as ort

        providers = ort.get_available_providers()
        runtimes["onnxruntime"] = ort.__version__
        if "CUDAExecutionProvider" in providers:
            runtimes["onnxruntime-cuda"] = ort.__version__
    runtimes["tensorrt"] = package_version("tensorrt") if present("tensorrt") else None
    runtimes["torch"] = package_version("torch") if present("torch") else None
    runtimes["edgetpu"] = edgetpu_library()
    return {"schema": PROBE_SCHEMA, "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "runtimes": runtimes, "onnxruntime_providers": providers, "system": system_info()}


def timed_runs(run, x: np.ndarray, runs: int, warmup: int, max_seconds: float, at_least: int = 10) -> list[float]:
    """``run(x)`` ``warmup`` times, then timed up to ``runs`` times or for ``max_seconds`` (at least ``at_least``
    times): the latencies in ms."""
    for _ in range(warmup):
        run(x)
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < at_least or time.perf_counter() < deadline):
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def time_models(models: list[dict], base: Path, threads: int, runs: int, warmup: int, max_seconds: float,
                log=None) -> dict:
    """The median latency in ms of each of ``models`` (``{"name", "path", "input_shape"}``: fp32 ONNX files under
    ``base``) with ONNX Runtime's CPU provider on random inputs, one after another in this process; ``log`` gets a
    line per model."""
    medians = {}
    for index, entry in enumerate(models):
        session = OnnxSession(str(base / entry["path"]), threads, ["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(entry["input_shape"]).astype(np.float32)
        medians[entry["name"]] = statistics.median(timed_runs(session.run, x, runs, warmup, max_seconds))
        if log:
            log(f"timed {index + 1}/{len(models)}: {entry['path']} {medians[entry['name']]:.4f} ms")
    return {"schema": TIMINGS_SCHEMA, "runtime": "onnxruntime", "runtime_version": package_version("onnxruntime"),
            "threads": threads, "median_ms": medians, "system": system_info()}


POSTPROCESS_RUNS = 200  # timed runs of a detector's inference + decoding + NMS: a second figure, not the main one


def _with_postprocess_ms(model: Model, manifest: dict, nchw: tuple, runs: int, warmup: int,
                         max_seconds: float) -> dict | None:
    """A detector's latency with its decoding and NMS (``detection.postprocess``, at the manifest's thresholds) after
    each inference, on the seeded noise the network alone is timed on; None for a classifier."""
    if manifest.get("task") != "detect":
        return None
    from .detection import check_options, postprocess

    options = check_options(manifest["detect"])
    x = np.random.default_rng(0).standard_normal(nchw).astype(np.float32)
    times = timed_runs(lambda sample: postprocess(model.outputs(sample), tuple(nchw[2:]), options), x,
                       min(runs, POSTPROCESS_RUNS), min(warmup, POSTPROCESS_RUNS), max_seconds / 4)
    return {"p50": _percentile(times, 50), "p90": _percentile(times, 90)}


def bench(manifest: dict, base: Path, kind: str, threads: int, runs: int, warmup: int, max_seconds: float) -> dict:
    """Load time, first inference, then ``runs`` timed inferences (or ``max_seconds``) after ``warmup``."""
    baseline_mb = _rss_mb()
    artifact = find_artifact(manifest, kind)
    model = Model(artifact, base, threads, manifest.get("execution_providers", ()))
    n, *rest = artifact["input_shape"]
    nchw = (n, rest[2], rest[0], rest[1]) if artifact["input_layout"] == "NHWC" else (n, *rest)
    x = model.prepare(np.random.default_rng(0).standard_normal(nchw).astype(np.float32))
    started = time.perf_counter()
    model.session.run(x)
    first = time.perf_counter() - started
    times = timed_runs(model.session.run, x, runs, warmup, max_seconds)
    decoded = _with_postprocess_ms(model, manifest, nchw, runs, warmup, max_seconds)
    peak_mb = _peak_rss_mb()
    mean = statistics.fmean(times)
    return {
        "schema": RESULT_SCHEMA,
        "artifact": kind,
        "file": artifact["path"],
        "sha256": artifact.get("sha256", ""),
        "size_bytes": (base / artifact["path"]).stat().st_size,
        "runtime": model.session.runtime,
        "runtime_version": model.session.version,
        "accelerators": model.session.accelerators,
        # every row has it, whatever the host: an int8 QDQ model run op by op in float (see OnnxSession)
        "qdq_unfused": artifact.get("precision") == "int8" and getattr(model.session, "exact_int8", False),
        "threads": threads,
        "load_ms": model.load_seconds * 1e3,
        "first_inference_ms": first * 1e3,
        "warmup_runs": warmup,
        "runs": len(times),
        "latency_ms": {
            "p50": _percentile(times, 50), "p90": _percentile(times, 90), "p99": _percentile(times, 99),
            "mean": mean, "std": statistics.pstdev(times), "min": min(times), "max": max(times),
        },
        "throughput_per_s": 1e3 / mean * n,
        **({"latency_with_postprocess_ms": decoded} if decoded else {}),
        "peak_rss_mb": peak_mb,
        "baseline_rss_mb": baseline_mb,
        "rss_growth_mb": peak_mb - baseline_mb,
        "system": system_info(),
    }


def aggregate(repeats: list[dict], noise_threshold: float) -> dict:
    """One artifact's repeats -> the median of each statistic, with the spread of the repeats' medians.

    ``spread`` is (max - min) / median of the per-repeat medians; above ``noise_threshold`` the result
    is flagged noisy (thermal throttling, a busy machine, frequency scaling).
    """
    medians = [r["latency_ms"]["p50"] for r in repeats]
    median_of_medians = statistics.median(medians)
    spread = (max(medians) - min(medians)) / median_of_medians if len(medians) > 1 else None
    last = repeats[-1]
    middle = lambda key: statistics.median(r[key] for r in repeats)  # noqa: E731
    return {
        **{k: v for k, v in last.items() if k != "system"},
        "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in repeats) for k in last["latency_ms"]},
        **({"latency_with_postprocess_ms": {k: statistics.median(r["latency_with_postprocess_ms"][k] for r in repeats)
                                            for k in last["latency_with_postprocess_ms"]}}
           if "latency_with_postprocess_ms" in last else {}),
        "runs": sum(r["runs"] for r in repeats),
        "load_ms": middle("load_ms"), "first_inference_ms": middle("first_inference_ms"),
        "throughput_per_s": middle("throughput_per_s"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in repeats), "rss_growth_mb": max(r["rss_growth_mb"] for r in repeats),
        "repeats": [{"p50": r["latency_ms"]["p50"], "p90": r["latency_ms"]["p90"], "p99": r["latency_ms"]["p99"],
                     "runs": r["runs"], "peak_rss_mb": r["peak_rss_mb"], "conditions": {
                         k: r["system"][k] for k in ("temperature_c", "cpu_mhz", "throttled") if k in r["system"]}}
                    for r in repeats],
        "median_of_medians_ms": median_of_medians,
        "spread": spread,
        "noisy": None if spread is None else spread > noise_threshold,
        "noise_threshold": noise_threshold,
    }


def bench_all(manifest_path: Path, kinds: list[str], repeats: int, bench_args: list[str], noise_threshold: float,
              timeout_s: float) -> dict:
    """Every artifact, ``repeats`` times, each run a fresh process of this script; progress on stderr."""
    manifest = load_manifest(manifest_path)
    kinds = kinds or [a["kind"] for a in manifest["artifacts"]]
    for kind in kinds:
        find_artifact(manifest, kind)
    before = system_info()
    results = []
    scratch = manifest_path.resolve().parent / f".bench-{os.getpid()}.json"
    # The repeats run this same copy of the package, whatever else the board's Python has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        for index, kind in enumerate(kinds, 1):
            runs = []
            for repeat in range(1, repeats + 1):
                print(f"[{index}/{len(kinds)}] {kind}: repeat {repeat}/{repeats}", file=sys.stderr, flush=True)
                command = [sys.executable, "-m", "board_runtime", "--manifest", str(manifest_path), "bench",
                           "--artifact", kind, *bench_args, "--json", str(scratch)]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
                except subprocess.TimeoutExpired:
                    raise SystemExit(f"error: benchmark of {kind} took longer than {timeout_s:g} s")
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    raise SystemExit(f"error: benchmark of {kind} failed: {last}")
                runs.append(json.loads(scratch.read_text()))
            results.append(aggregate(runs, noise_threshold))
            summary = results[-1]
            spread = "" if summary["spread"] is None else f", spread {summary['spread']:.1%}"
            print(f"[{index}/{len(kinds)}] {kind}: p50 {summary['latency_ms']['p50']:.3f} ms{spread}"
                  f"{' NOISY' if summary['noisy'] else ''}", file=sys.stderr, flush=True)
    finally:
        scratch.unlink(missing_ok=True)
    return {"schema": SUITE_SCHEMA, "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "repeats": repeats, "system": before, "system_after": system_info(), "results": results}


