"""The runtime's command line, as a bundle runs it::

    python run_model.py list                               # the artifacts in the bundle
    python run_model.py predict  --artifact tflite-int8 photo.png [image.npy ...]
    python run_model.py bench-all --threads 4 --repeats 3 --json results.json   # every artifact
    python run_model.py bench    --artifact tflite-int8 --threads 4 --json result.json
    python run_model.py probe                              # this machine and its runtimes, as JSON
    python run_model.py logits --inputs inputs.npy --json logits.json   # every artifact's outputs on given inputs
                                                           # (a detector's: its detections, decoded here)
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


def predict_detections(model: Model, x: np.ndarray, image_path: Path, manifest: dict, out_dir: Path | None) -> str:
    """A detector on one image: its confident detections in the photo's pixels, one per line, and the photo with
    them drawn (``<name>.detections.png``)."""
    from .detection import postprocess
    from .draw import draw_boxes
    from .imaging import unletterbox

    options, classes = manifest["detect"], manifest.get("classes") or []
    found = postprocess(model.outputs(x), tuple(x.shape[2:]), options).above(options["display_threshold"])
    if image_path.suffix.lower() == ".npy":
        photo = None
        height, width = x.shape[2:]
        boxes = found.boxes * np.asarray([width, height, width, height], np.float32)
    else:
        from PIL import Image

        with Image.open(image_path) as opened:
            photo = opened.convert("RGB")
        size = manifest["preprocess"].get("letterbox") or list(x.shape[2:])
        boxes = unletterbox(found.boxes, photo.width, photo.height, tuple(size))
    lines = [f"{image_path}: {len(found)} detections"]
    for box, score, cls in zip(boxes, found.scores, found.classes):
        name = classes[cls] if cls < len(classes) else str(cls)
        lines.append(f"  {name} {score:.3f} at x1={box[0]:.0f} y1={box[1]:.0f} x2={box[2]:.0f} y2={box[3]:.0f}")
    if photo is not None:
        draw_boxes(photo, boxes, found.scores, found.classes, classes)
        target = (out_dir or image_path.parent) / f"{image_path.stem}.detections.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        photo.save(tmp, format="PNG")
        os.replace(tmp, target)
        lines.append(f"  drawn: {target}")
    return "\n".join(lines)


def _probe(args) -> int:
    print(json.dumps(probe(), indent=2))
    return 0


def _list(args, manifest: dict, base: Path) -> int:
    for a in manifest["artifacts"]:
        print(f"{a['kind']:12s} {a['path']}  input {a['input_shape']} {a['input_layout']} {a['input_dtype']}")
    return 0


def _verify(args, manifest: dict, base: Path) -> int:
    bad = verify(manifest, base)
    for name in bad:
        print(f"MISMATCH {name}")
    print(f"{len(manifest.get('files', {})) - len(bad)} of {len(manifest.get('files', {}))} files verified")
    return 1 if bad else 0


def _predict(args, manifest: dict, base: Path) -> int:
    model = Model(find_artifact(manifest, args.artifact), base, args.threads, manifest.get("execution_providers", ()))
    classes = manifest.get("classes") or []
    if manifest.get("preprocess") is None:
        raise SystemExit(f"error: {args.manifest}: the manifest records no preprocessing (the model was "
                         "benchmarked without data); give the pipeline its preprocessing to predict on images")
    for image_path in args.images:
        x = read_for_model(image_path, manifest["preprocess"], manifest["input"]["shape"][1])
        if manifest.get("task") == "detect":
            print(predict_detections(model, x, image_path, manifest, args.out_dir))
            continue
        logits = model.predict(x)[0]
        top = int(logits.argmax())
        print(f"{image_path}: {classes[top] if top < len(classes) else top} (class {top}, logit {logits[top]:.3f})")
    return 0


def _logits(args, manifest: dict, base: Path) -> int:
    inputs = np.load(args.inputs)
    chosen = [k for k in args.artifacts.split(",") if k] or [a["kind"] for a in manifest["artifacts"]]
    detector = manifest.get("task") == "detect"
    outputs = {}
    for kind in chosen:
        model = Model(find_artifact(manifest, kind), base, args.threads, manifest.get("execution_providers", ()))
        if detector:
            from .detection import postprocess

            outputs[kind] = [postprocess(model.outputs(x[None]), tuple(x.shape[1:]), manifest["detect"]).to_json()
                             for x in inputs]
        else:
            outputs[kind] = model.predict_each(inputs).tolist()
    _write_json(args.json, {"schema": LOGITS_SCHEMA, "machine": probe()["system"], "samples": len(inputs),
                            "detections" if detector else "logits": outputs})
    return 0


def _printed(result: dict, args) -> int:
    """A timing: printed, and written to --json."""
    print(_write_json(args.json, result) if args.json else json.dumps(result, indent=2))
    return 0


def _time_models(args, manifest: dict, base: Path) -> int:
    return _printed(time_models(manifest.get("timed_models", []), base, args.threads, args.runs, args.warmup,
                                args.max_seconds, lambda line: print(line, file=sys.stderr, flush=True)), args)


def _bench(args, manifest: dict, base: Path) -> int:
    return _printed(bench(manifest, base, args.artifact, args.threads, args.runs, args.warmup, args.max_seconds), args)


def _bench_all(args, manifest: dict, base: Path) -> int:
    bench_args = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
                  "--max-seconds", str(args.max_seconds)]
    kinds = [k for k in args.artifacts.split(",") if k]
    return _printed(bench_all(args.manifest, kinds, max(1, args.repeats), bench_args, args.noise_threshold,
                              timeout_s=args.max_seconds * 3 + 300), args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_model.py", description="Run or time the models of a bundle")
    parser.add_argument("--manifest", type=Path, default=PACKAGE_PARENT / "manifest.json")
    parser.set_defaults(bundle=True)  # the command reads the bundle's manifest
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the artifacts").set_defaults(func=_list)
    sub.add_parser("verify", help="check every file of the bundle against the manifest's sha256").set_defaults(
        func=_verify)
    sub.add_parser("probe", help="print this machine's facts and runtimes as JSON").set_defaults(func=_probe,
                                                                                                  bundle=False)
    lg = sub.add_parser("logits", help="every artifact's outputs on model inputs (N, C, H, W float32 .npy, as the "
                                       "host evaluates), as JSON: the board's own evaluation; a detector's are its "
                                       "detections, decoded and NMS'd here")
    lg.add_argument("--inputs", type=Path, required=True)
    lg.add_argument("--artifacts", default="", help="comma-separated kinds (default: all in the manifest)")
    lg.add_argument("--threads", type=int, default=1)
    lg.add_argument("--json", type=Path, required=True)
    lg.set_defaults(func=_logits)
    p = sub.add_parser("predict", help="classify image files (PNG, JPEG) or raw images saved as .npy; a detector "
                                       "prints its detections and writes each photo with its boxes drawn")
    p.add_argument("--artifact", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, help="where a detector's drawn photos go (default: beside each photo)")
    p.add_argument("images", nargs="+", type=Path)
    p.set_defaults(func=_predict)
    timing = argparse.ArgumentParser(add_help=False)
    timing.add_argument("--threads", type=int, default=1)
    timing.add_argument("--runs", type=int, default=200, help="timed runs (at most)")
    timing.add_argument("--warmup", type=int, default=20)
    timing.add_argument("--max-seconds", type=float, default=20.0, help="stop timing after this long (>= 10 runs)")
    timing.add_argument("--json", type=Path, help="also write the result here")
    b = sub.add_parser("bench", parents=[timing], help="benchmark one artifact in this process")
    b.add_argument("--artifact", required=True)
    b.set_defaults(func=_bench)
    a = sub.add_parser("bench-all", parents=[timing], help="benchmark every artifact, each repeat in a fresh process")
    a.add_argument("--artifacts", default="", help="comma-separated kinds (default: all in the manifest)")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--noise-threshold", type=float, default=0.1, help="flag spreads of the repeats' medians above this")
    a.set_defaults(func=_bench_all)
    sub.add_parser("time-models", parents=[timing],
                   help="the median latency of each model the manifest lists under 'timed_models' (fp32 ONNX: the "
                        "compress step's latency table)").set_defaults(func=_time_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.bundle:
        return args.func(args)
    if not args.manifest.is_file():
        raise SystemExit(f"error: {args.manifest}: manifest not found")
    return args.func(args, load_manifest(args.manifest), args.manifest.resolve().parent)
