#!/usr/bin/env python3
"""Standalone model runner and benchmark: needs only the Python standard library, numpy and the runtime.

It is copied into every bundle. Given a bundle's ``manifest.json`` it runs one artifact:

    python run_model.py list                               # the artifacts in the bundle
    python run_model.py predict  --artifact tflite-int8 image.npy [image2.npy ...]
    python run_model.py bench-all --threads 4 --repeats 3 --json results.json   # every artifact
    python run_model.py bench    --artifact tflite-int8 --threads 4 --json result.json
    python run_model.py probe                              # this machine and its runtimes, as JSON
    python run_model.py verify                             # check every file against its sha256

``predict`` takes raw images as .npy (H, W[, C], uint8 or float in [0, 1]) and applies the bundle's
normalisation, layout and input quantization. ``bench`` times one artifact in this process;
``bench-all`` runs ``bench`` for every artifact, ``--repeats`` times each, each time in a fresh
process (clean peak memory, no shared warm-up), and reports the median of the repeats' statistics,
flagging an artifact as noisy when its repeats' medians spread wider than ``--noise-threshold``.
Runtimes, in order of preference: TFLite through ai-edge-litert, else tflite-runtime, else
tensorflow.lite, with the Edge TPU delegate when libedgetpu is installed; ONNX through onnxruntime
with the manifest's execution providers that this machine has; TorchScript through torch (host
reference only).
"""
from __future__ import annotations

import argparse
import ctypes.util
import hashlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULT_SCHEMA = "embedded-pipeline/bench-result/2"
SUITE_SCHEMA = "embedded-pipeline/bench-suite/1"
PROBE_SCHEMA = "embedded-pipeline/probe/1"
# TFLite runtimes in order of preference: (module with Interpreter, runtime name, distribution).
TFLITE_RUNTIMES = (("ai_edge_litert.interpreter", "litert", "ai-edge-litert"),
                   ("tflite_runtime.interpreter", "tflite-runtime", "tflite-runtime"),
                   ("tensorflow.lite", "tensorflow", "tensorflow"))
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


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


def _edgetpu_library() -> str | None:
    name = EDGETPU_LIBRARY.get(platform.system())
    return name if name and ctypes.util.find_library("edgetpu") else None


class TFLiteSession:
    def __init__(self, path: str, threads: int, int8: bool, providers: list[str]):
        errors = []
        for module, name, distribution in TFLITE_RUNTIMES:
            try:
                interpreter_module = __import__(module, fromlist=["Interpreter"])
                break
            except ImportError as exc:
                errors.append(f"{name}: {exc}")
        else:
            raise RuntimeError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime); " + "; ".join(errors))
        self.runtime, self.version = name, _version(distribution)
        # Only integer models can run on the Edge TPU; the delegate leaves ops it cannot take on the CPU.
        edgetpu = _edgetpu_library() if int8 else None
        delegates = [interpreter_module.load_delegate(edgetpu)] if edgetpu else []
        self.accelerators = ["edgetpu"] if edgetpu else []
        self.interpreter = interpreter_module.Interpreter(model_path=path, num_threads=threads,
                                                          experimental_delegates=delegates or None)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


class OnnxSession:
    def __init__(self, path: str, threads: int, int8: bool, providers: list[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.runtime, self.version = "onnxruntime", ort.__version__
        available = ort.get_available_providers()
        wanted = [p for p in providers if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=wanted)
        self.accelerators = [p for p in self.session.get_providers() if p != "CPUExecutionProvider"]
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class TorchSession:
    def __init__(self, path: str, threads: int, int8: bool, providers: list[str]):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.runtime, self.version, self.accelerators = torch, "torch", torch.__version__, []
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.module(self.torch.from_numpy(x)).numpy()


SESSIONS = {"tflite": TFLiteSession, "onnx": OnnxSession, "torch": TorchSession}


def _version(distribution: str) -> str:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return "unknown"


class Model:
    """An artifact of a manifest, fed with normalised NCHW float32 inputs and returning float logits."""

    def __init__(self, artifact: dict, base: Path, threads: int, providers: list[str] = ()):
        self.artifact = artifact
        fmt, precision = artifact["kind"].split("-", 1)
        started = time.perf_counter()
        self.session = SESSIONS[fmt](str(base / artifact["path"]), threads, precision == "int8", list(providers))
        self.load_seconds = time.perf_counter() - started

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        """Layout and input quantization for one batch of normalised NCHW float inputs."""
        a = self.artifact
        x = x_nchw.transpose(0, 2, 3, 1) if a["input_layout"] == "NHWC" else x_nchw
        if a["input_quant"]:
            q = a["input_quant"]
            info = np.iinfo(np.dtype(a["input_dtype"]))
            x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max)
        return np.ascontiguousarray(x.astype(a["input_dtype"]))

    def finish(self, y: np.ndarray) -> np.ndarray:
        q = self.artifact["output_quant"]
        return (y.astype(np.float32) - q["zero_point"]) * q["scale"] if q else y.astype(np.float32)

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.session.run(self.prepare(x_nchw)))


def load_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def find_artifact(manifest: dict, kind: str) -> dict:
    for artifact in manifest["artifacts"]:
        if artifact["kind"] == kind:
            return artifact
    valid = ", ".join(a["kind"] for a in manifest["artifacts"])
    raise SystemExit(f"error: no artifact '{kind}' in the manifest; valid: {valid}")


def normalise(images: np.ndarray, manifest: dict) -> np.ndarray:
    """Raw images (N, H, W[, C], uint8 or [0, 1] float) -> normalised NCHW float32."""
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if x.ndim == 3:
        x = x[..., None]
    pre = manifest["preprocess"]
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def verify(manifest: dict, base: Path) -> list[str]:
    """The files whose sha256 does not match the manifest (missing files included)."""
    bad = []
    for name, digest in manifest.get("files", {}).items():
        path = base / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


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


def system_info() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "release": platform.release(),
            "python": platform.python_version(), "cores": os.cpu_count()}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
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
    runtimes = {name: (_version(dist) if present(module.split(".")[0]) else None)
                for module, name, dist in TFLITE_RUNTIMES}
    runtimes["onnxruntime"] = runtimes["onnxruntime-cuda"] = None
    providers = []
    if present("onnxruntime"):
        import onnxruntime as ort

        providers = ort.get_available_providers()
        runtimes["onnxruntime"] = ort.__version__
        if "CUDAExecutionProvider" in providers:
            runtimes["onnxruntime-cuda"] = ort.__version__
    runtimes["tensorrt"] = _version("tensorrt") if present("tensorrt") else None
    runtimes["torch"] = _version("torch") if present("torch") else None
    runtimes["edgetpu"] = _edgetpu_library()
    return {"schema": PROBE_SCHEMA, "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "runtimes": runtimes, "onnxruntime_providers": providers, "system": system_info()}


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
    for _ in range(warmup):
        model.session.run(x)
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < 10 or time.perf_counter() < deadline):
        started = time.perf_counter()
        model.session.run(x)
        times.append((time.perf_counter() - started) * 1e3)
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
    try:
        for index, kind in enumerate(kinds, 1):
            runs = []
            for repeat in range(1, repeats + 1):
                print(f"[{index}/{len(kinds)}] {kind}: repeat {repeat}/{repeats}", file=sys.stderr, flush=True)
                command = [sys.executable, str(Path(__file__).resolve()), "--manifest", str(manifest_path), "bench",
                           "--artifact", kind, *bench_args, "--json", str(scratch)]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
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


def _write_json(path: Path, data: dict) -> str:
    text = json.dumps(data, indent=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=Path(__file__).resolve().parent / "manifest.json")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the artifacts")
    sub.add_parser("verify", help="check every file of the bundle against the manifest's sha256")
    sub.add_parser("probe", help="print this machine's facts and runtimes as JSON")
    p = sub.add_parser("predict", help="classify raw images saved as .npy")
    p.add_argument("--artifact", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("images", nargs="+", type=Path)
    timing = argparse.ArgumentParser(add_help=False)
    timing.add_argument("--threads", type=int, default=1)
    timing.add_argument("--runs", type=int, default=200, help="timed runs (at most)")
    timing.add_argument("--warmup", type=int, default=20)
    timing.add_argument("--max-seconds", type=float, default=20.0, help="stop timing after this long (>= 10 runs)")
    timing.add_argument("--json", type=Path, help="also write the result here")
    b = sub.add_parser("bench", parents=[timing], help="benchmark one artifact in this process")
    b.add_argument("--artifact", required=True)
    a = sub.add_parser("bench-all", parents=[timing], help="benchmark every artifact, each repeat in a fresh process")
    a.add_argument("--artifacts", default="", help="comma-separated kinds (default: all in the manifest)")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--noise-threshold", type=float, default=0.1, help="flag spreads of the repeats' medians above this")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(probe(), indent=2))
        return 0
    if not args.manifest.is_file():
        raise SystemExit(f"error: {args.manifest}: manifest not found")
    manifest = load_manifest(args.manifest)
    base = args.manifest.resolve().parent
    if args.command == "list":
        for a in manifest["artifacts"]:
            print(f"{a['kind']:12s} {a['path']}  input {a['input_shape']} {a['input_layout']} {a['input_dtype']}")
    elif args.command == "verify":
        bad = verify(manifest, base)
        for name in bad:
            print(f"MISMATCH {name}")
        print(f"{len(manifest.get('files', {})) - len(bad)} of {len(manifest.get('files', {}))} files verified")
        return 1 if bad else 0
    elif args.command == "predict":
        model = Model(find_artifact(manifest, args.artifact), base, args.threads, manifest.get("execution_providers", ()))
        classes = manifest.get("classes") or []
        for image_path in args.images:
            logits = model.predict(normalise(np.load(image_path)[None], manifest))[0]
            top = int(logits.argmax())
            print(f"{image_path}: {classes[top] if top < len(classes) else top} (class {top}, logit {logits[top]:.3f})")
    elif args.command == "bench":
        result = bench(manifest, base, args.artifact, args.threads, args.runs, args.warmup, args.max_seconds)
        text = _write_json(args.json, result) if args.json else json.dumps(result, indent=2)
        print(text)
    else:
        bench_args = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
                      "--max-seconds", str(args.max_seconds)]
        kinds = [k for k in args.artifacts.split(",") if k]
        suite = bench_all(args.manifest, kinds, max(1, args.repeats), bench_args, args.noise_threshold,
                          timeout_s=args.max_seconds * 3 + 300)
        text = _write_json(args.json, suite) if args.json else json.dumps(suite, indent=2)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
