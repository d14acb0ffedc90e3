"""The runtime's command line, as a bundle runs it::

    python run_model.py list                               # the artifacts in the bundle
    python run_model.py predict  --artifact tflite-int8 photo.png [image.npy ...]
    python run_model.py bench-all --threads 4 --repeats 3 --json results.json   # every artifact
    python run_model.py bench    --artifact tflite-int8 --threads 4 --json result.json
    python run_model.py probe                              # this machine and its runtimes, as JSON
    python run_model.py logits --inputs inputs.npy --json logits.json   # every artifact's outputs on given inputs
    python run_model.py verify                             # check every file against its sha256
    python run_model.py time-models --threads 4 --json timings.json   # the median latency of each timed model

``predict`` takes image files (PNG, JPEG; read with Pillow, resized and cropped as the bundle says) or raw
images as .npy (H, W[, C], uint8 or float in [0, 1], already at the input size) and applies the bundle's
channel order, normalisation, layout and input quantization. Each artifact runs with the session its manifest entry names:
TFLite through ai-edge-litert, else tflite-runtime, else tensorflow.lite; an Edge TPU-compiled model through
the Edge TPU delegate; ONNX through onnxruntime with the manifest's execution providers that this machine has;
TorchScript through torch (host reference only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


import numpy as np

from .measure import PACKAGE_PARENT, bench, bench_all, probe, time_models
from .schemas import LOGITS_SCHEMA
from .imaging import read_for_model
from .model import Model, find_artifact, load_manifest, verify


def _write_json(path: Path, data: dict) -> str:
    text = json.dumps(data, indent=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_model.py", description="Run or time the models of a bundle")
    parser.add_argument("--manifest", type=Path, default=PACKAGE_PARENT / "manifest.json")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the artifacts")
    sub.add_parser("verify", help="check every file of the bundle against the manifest's sha256")
    sub.add_parser("probe", help="print this machine's facts and runtimes as JSON")
    lg = sub.add_parser("logits", help="every artifact's outputs on model inputs (N, C, H, W float32 .npy, as the "
                                       "host evaluates), as JSON: the board's own evaluation")
    lg.add_argument("--inputs", type=Path, required=True)
    lg.add_argument("--artifacts", default="", help="comma-separated kinds (default: all in the manifest)")
    lg.add_argument("--threads", type=int, default=1)
    lg.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("predict", help="classify image files (PNG, JPEG) or raw images saved as .npy")
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
    sub.add_parser("time-models", parents=[timing],
                   help="the median latency of each model the manifest lists under 'timed_models' (fp32 ONNX: the "
                        "compress step's latency table)")
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
        if manifest.get("preprocess") is None:
            raise SystemExit(f"error: {args.manifest}: the manifest records no preprocessing (the model was "
                             "benchmarked without data); give the pipeline its preprocessing to predict on images")
        for image_path in args.images:
            channels = manifest["input"]["shape"][1]
            logits = model.predict(read_for_model(image_path, manifest["preprocess"], channels))[0]
            top = int(logits.argmax())
            print(f"{image_path}: {classes[top] if top < len(classes) else top} (class {top}, logit {logits[top]:.3f})")
    elif args.command == "logits":
        inputs = np.load(args.inputs)
        chosen = [k for k in args.artifacts.split(",") if k] or [a["kind"] for a in manifest["artifacts"]]
        outputs = {}
        for kind in chosen:
            model = Model(find_artifact(manifest, kind), base, args.threads, manifest.get("execution_providers", ()))
            outputs[kind] = model.predict_each(inputs).tolist()
        _write_json(args.json, {"schema": LOGITS_SCHEMA, "machine": probe()["system"], "samples": len(inputs),
                                "logits": outputs})
    else:  # a timing: printed, and written to --json
        if args.command == "time-models":
            result = time_models(manifest.get("timed_models", []), base, args.threads, args.runs, args.warmup,
                                 args.max_seconds, lambda line: print(line, file=sys.stderr, flush=True))
        elif args.command == "bench":
            result = bench(manifest, base, args.artifact, args.threads, args.runs, args.warmup, args.max_seconds)
        else:
            bench_args = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
                          "--max-seconds", str(args.max_seconds)]
            kinds = [k for k in args.artifacts.split(",") if k]
            result = bench_all(args.manifest, kinds, max(1, args.repeats), bench_args, args.noise_threshold,
                               timeout_s=args.max_seconds * 3 + 300)
        print(_write_json(args.json, result) if args.json else json.dumps(result, indent=2))
    return 0
