#!/usr/bin/env python3
"""Standalone model runner and benchmark: needs only the Python standard library, numpy and the runtime.

It is copied into every bundle. Given a bundle's ``manifest.json`` it runs one artifact:

    python run_model.py list                               # the artifacts in the bundle
    python run_model.py predict  --artifact tflite-int8 image.npy [image2.npy ...]
    python run_model.py bench    --artifact tflite-int8 --threads 4 --json result.json
    python run_model.py verify                             # check every file against its sha256

``predict`` takes raw images as .npy (H, W[, C], uint8 or float in [0, 1]) and applies the bundle's
normalisation, layout and input quantization. ``bench`` times one artifact in this process (start a
fresh process per artifact for a clean peak-memory figure). Runtimes, in order of preference:
TFLite through ai-edge-litert, else tflite-runtime, else tensorflow.lite; ONNX through onnxruntime;
TorchScript through torch (host reference only).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULT_SCHEMA = "embedded-pipeline/bench-result/1"


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


class TFLiteSession:
    def __init__(self, path: str, threads: int):
        errors = []
        for module, name in (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"),
                             ("tensorflow.lite", "tensorflow")):
            try:
                interpreter_module = __import__(module, fromlist=["Interpreter"])
                break
            except ImportError as exc:
                errors.append(f"{name}: {exc}")
        else:
            raise RuntimeError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime); " + "; ".join(errors))
        self.runtime = name
        self.version = _version({"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime",
                                 "tensorflow": "tensorflow"}[name])
        self.interpreter = interpreter_module.Interpreter(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


class OnnxSession:
    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.runtime, self.version = "onnxruntime", ort.__version__
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class TorchSession:
    def __init__(self, path: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.runtime, self.version = torch, "torch", torch.__version__
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.module(self.torch.from_numpy(x)).numpy()


SESSIONS = {"tflite": TFLiteSession, "onnx": OnnxSession, "torch": TorchSession}


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(module, module))
    except Exception:
        return "unknown"


class Model:
    """An artifact of a manifest, fed with normalised NCHW float32 inputs and returning float logits."""

    def __init__(self, artifact: dict, base: Path, threads: int):
        self.artifact = artifact
        fmt = artifact["kind"].split("-")[0]
        started = time.perf_counter()
        self.session = SESSIONS[fmt](str(base / artifact["path"]), threads)
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


def system_info() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.is_file():
        info["governor"] = governor.read_text().strip()
    return info


def bench(manifest: dict, base: Path, kind: str, threads: int, runs: int, warmup: int, max_seconds: float) -> dict:
    """Load time, first inference, then ``runs`` timed inferences (or ``max_seconds``) after ``warmup``."""
    baseline_mb = _rss_mb()
    artifact = find_artifact(manifest, kind)
    model = Model(artifact, base, threads)
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
    return {
        "schema": RESULT_SCHEMA,
        "artifact": kind,
        "file": artifact["path"],
        "sha256": artifact.get("sha256", ""),
        "size_bytes": (base / artifact["path"]).stat().st_size,
        "runtime": model.session.runtime,
        "runtime_version": model.session.version,
        "threads": threads,
        "load_ms": model.load_seconds * 1e3,
        "first_inference_ms": first * 1e3,
        "warmup_runs": warmup,
        "runs": len(times),
        "latency_ms": {
            "p50": _percentile(times, 50), "p90": _percentile(times, 90), "p99": _percentile(times, 99),
            "mean": statistics.fmean(times), "std": statistics.pstdev(times), "min": min(times), "max": max(times),
        },
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
        "system": system_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=Path(__file__).resolve().parent / "manifest.json")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the artifacts")
    sub.add_parser("verify", help="check every file of the bundle against the manifest's sha256")
    p = sub.add_parser("predict", help="classify raw images saved as .npy")
    p.add_argument("--artifact", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("images", nargs="+", type=Path)
    b = sub.add_parser("bench", help="benchmark one artifact in this process")
    b.add_argument("--artifact", required=True)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--runs", type=int, default=200)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--max-seconds", type=float, default=20.0)
    b.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
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
        model = Model(find_artifact(manifest, args.artifact), base, args.threads)
        classes = manifest.get("classes") or []
        for image_path in args.images:
            logits = model.predict(normalise(np.load(image_path)[None], manifest))[0]
            top = int(logits.argmax())
            print(f"{image_path}: {classes[top] if top < len(classes) else top} (class {top}, logit {logits[top]:.3f})")
    else:
        result = bench(manifest, base, args.artifact, args.threads, args.runs, args.warmup, args.max_seconds)
        text = json.dumps(result, indent=2)
        if args.json:
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, args.json)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
