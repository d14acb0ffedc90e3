"""A detector's int8 artifacts against ONNX Runtime's ``quantize_static`` defaults, scored alike.

Takes a finished ``pipeline run`` directory of a detector (``--task detect``, or the built-in ``fmnist-detector``)
and a target of it, and puts side by side, on the run's held-out images and with the run's decoder: every artifact
of the target (the pipeline's ONNX and TFLite int8, fp16, ...) and ONNX Runtime's ``quantize_static`` with its
defaults (QDQ, MinMax ranges, per-tensor weights, the same calibration samples the run used), each scored with the
pipeline's evaluator: mAP50-95 / mAP50 against the labels where the data has them and against the float model's
own boxes, per-output SQNR, and p50 latency of the network alone and with decoding + NMS (single thread, this host).

    python benchmarks/detector_int8.py out-detector --target raspberry-pi-4 --json detector_int8.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from board_runtime.detection import check_options, postprocess  # noqa: E402
from board_runtime.model import Model  # noqa: E402
from pipeline.artifacts import Artifact  # noqa: E402
from pipeline.config import build_config  # noqa: E402
from pipeline.detection.evaluate import evaluate_detectors  # noqa: E402


def ort_default_int8(export: Path, samples: np.ndarray, out: Path) -> Path:
    """``quantize_static`` as its documentation's example calls it: every default."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(samples)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"input": np.asarray(row[None], np.float32)}

    quantize_static(str(export), str(out), Reader())
    return out


def p50_ms(model: Model, x: np.ndarray, decoder: dict | None, runs: int = 200) -> float:
    """Median latency of one inference (with ``decoder``: and its decoding + NMS) in this process."""
    times = []
    for index in range(runs + 20):
        started = time.perf_counter()
        outputs = model.outputs(x)
        if decoder:
            postprocess(outputs, tuple(x.shape[2:]), decoder)
        if index >= 20:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a detector's pipeline run directory")
    parser.add_argument("--target", default="raspberry-pi-4")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out images (default: the run's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from pipeline.engine import Engine
    from pipeline.planner import Planner
    from pipeline.targets import load_target

    config = build_config(args.run / "pipeline.yaml", out=str(args.run))
    target = load_target(args.target)
    plan = Planner(config, Engine(args.run, requested=("report",)), [target])
    plan.model_record = json.loads((args.run / ".state" / "model.json").read_text())
    manifest = json.loads((args.run / target.name / "artifacts.json").read_text())
    decoder = check_options(manifest["detect"])
    artifacts = [Artifact(**{**a, "input_shape": tuple(a["input_shape"]), "outputs": tuple(a.get("outputs", ()))})
                 for a in manifest["artifacts"]]
    export = next(args.run.glob("shared/export-opset*/model.onnx"))
    samples = np.load(next(args.run.glob("shared/calibration-samples/inputs.npy")), mmap_mode="r")
    ort = ort_default_int8(export, samples, args.run / target.name / "ort-default-int8.onnx")
    artifacts.append(Artifact(kind="ort-default-int8", format="onnx", precision="int8", session="onnx", path=str(ort),
                              input_name="input", input_shape=artifacts[0].input_shape, input_layout="NCHW",
                              input_dtype="float32", output_dtype="float32"))
    test = plan.data.test.take(args.eval_samples or config.eval_samples)
    spec = plan.preprocess()
    batches = ((spec.apply(images), labels) for images, labels in test.batches())
    rows, _ = evaluate_detectors(artifacts, args.run / target.name, batches, len(test), 1, decoder, plan.data.labelled,
                                 len(manifest["classes"]), plan.model_record["data"]["output_names"])
    sample = spec.apply(test.subset(np.arange(1)).read())
    results = []
    for artifact, row in zip(artifacts, rows):
        model = Model(artifact.to_dict(), args.run / target.name, 1)
        results.append({**row.__dict__, "p50_ms": p50_ms(model, sample, None),
                        "p50_with_nms_ms": p50_ms(model, sample, decoder)})
    print(f"{args.run} ({plan.config.model}) for {target.name}: {len(test)} held-out images from {plan.data.source}")
    print("| artifact | mAP50-95 | mAP50 | mAP50-95 vs float | mAP50 vs float | SQNR per output (dB) | p50 (ms) | "
          "p50 + NMS (ms) |\n|---|---|---|---|---|---|---|---|")
    shown = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    for r in results:
        sqnr = ", ".join(f"{k} {'exact' if v is None else format(v, '.1f')}" for k, v in r["sqnr_db"].items())
        print(f"| {r['kind']} | {shown(r['map50_95'])} | {shown(r['map50'])} | {r['reference_map50_95']:.2f} | "
              f"{r['reference_map50']:.2f} | {sqnr} | {r['p50_ms']:.3f} | {r['p50_with_nms_ms']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
