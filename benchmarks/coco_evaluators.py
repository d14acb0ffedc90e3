"""COCO mAP evaluators side by side: faster-coco-eval (what the pipeline scores detectors with) against pycocotools
(the reference implementation), on the same detections: wall time, peak memory and the figures themselves.

Each evaluator runs in a fresh process (so that its peak RSS is its own), ``--repeats`` times; the medians are
printed with their ratio. The detections are the held-out Fashion-MNIST canvases' boxes, jittered, partly missed
and padded with false boxes up to ``--per-image`` detections per image (COCO evaluates up to 100), seeded.

    python benchmarks/coco_evaluators.py --images 5000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def coco_files(images: int, per_image: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Ground truth and detections as COCO JSON files in ``folder``."""
    from pipeline.data.detection import CANVAS, compose_canvases
    from pipeline.data.datasets import FASHION_MNIST_DIR, _find, _read_idx

    garments = _read_idx(_find(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte"))
    labels = _read_idx(_find(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte"))
    _, truth = compose_canvases(garments, labels, images, seed)
    rng = np.random.default_rng(seed)
    annotations, results = [], []
    for image, rows in enumerate(truth, start=1):
        boxes = rows[:, 1:] * CANVAS
        for cls, box in zip(rows[:, 0], boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(cls) + 1,
                                "bbox": [*map(float, box[:2]), *map(float, box[2:] - box[:2])],
                                "area": float(np.prod(box[2:] - box[:2])), "iscrowd": 0})
        kept = rng.random(len(boxes)) > 0.1  # a tenth of the garments missed, the others found a little off
        false = rng.random((per_image - int(kept.sum()), 2)) * CANVAS * 0.7
        false = np.concatenate([false, false + 4 + rng.random(false.shape) * 30], axis=1)
        found = np.concatenate([boxes[kept] + rng.normal(0, 1.5, (int(kept.sum()), 4)), false])
        classes = np.concatenate([rows[kept, 0] + 1, rng.integers(1, 11, len(false))])
        scores = np.concatenate([0.4 + 0.6 * rng.random(int(kept.sum())), 0.6 * rng.random(len(false))])
        for box, cls, score in zip(found, classes, scores):
            results.append({"image_id": image, "category_id": int(cls), "score": float(score),
                            "bbox": [*map(float, box[:2]), *map(float, box[2:] - box[:2])]})
    ground = {"images": [{"id": i, "width": CANVAS, "height": CANVAS} for i in range(1, images + 1)],
              "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(1, 11)]}
    (folder / "truth.json").write_text(json.dumps(ground))
    (folder / "found.json").write_text(json.dumps(results))
    return folder / "truth.json", folder / "found.json"


def evaluate(which: str, truth: Path, found: Path) -> dict:
    """One evaluation in this process: seconds (loading the results included) and mAP50-95 / mAP50."""
    import contextlib
    import io

    if which == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster as Evaluator
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO(str(truth))
        started = time.perf_counter()
        evaluator = Evaluator(ground, ground.loadRes(str(found)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"seconds": time.perf_counter() - started, "map50_95": 100 * float(evaluator.stats[0]),
            "map50": 100 * float(evaluator.stats[1]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".coco_evaluators")
    parser.add_argument("--one", nargs=3, metavar=("EVALUATOR", "TRUTH", "FOUND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(evaluate(args.one[0], Path(args.one[1]), Path(args.one[2]))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    truth, found = coco_files(args.images, args.per_image, args.work)
    results = {}
    for which in ("pycocotools", "faster-coco-eval"):
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", which, str(truth), str(found)],
                                          capture_output=True, text=True, check=True).stdout)
                for _ in range(args.repeats)]
        results[which] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    reference, fast = results["pycocotools"], results["faster-coco-eval"]
    print(f"{args.images} images, {args.per_image} detections each, median of {args.repeats} fresh processes")
    print("| evaluator | seconds | peak RSS (MiB) | mAP50-95 | mAP50 |\n|---|---|---|---|---|")
    for which, r in results.items():
        print(f"| {which} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['map50_95']:.4f} | {r['map50']:.4f} |")
    print(f"faster-coco-eval / pycocotools: time {fast['seconds'] / reference['seconds']:.2f}x, peak RSS "
          f"{fast['peak_rss_mb'] / reference['peak_rss_mb']:.2f}x; mAP50-95 difference "
          f"{abs(fast['map50_95'] - reference['map50_95']):.2e} points")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
