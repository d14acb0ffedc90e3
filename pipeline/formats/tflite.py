"""tflite-fp32, tflite-fp16, tflite-int8: ONNX -> TFLite through onnx2tf, one conversion for the three, without
the network and whatever the PATH.

onnx2tf runs in a child process (``python -m pipeline.formats.onnx2tf_job job.json``): it calls ``sys.exit``
on errors, changes TensorFlow's global state and must run in a working directory of our choosing. It writes the
float models and the saved model; the int8 model is made from that saved model in the same child process
(``tflite_int8``): calibrated by the TensorFlow Lite converter over the pipeline's calibration samples, with the
calibration step's ranges (those of onnx-int8) on every tensor that matches one of the ONNX model's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from calibration import CalibrationRanges
from calibration.fallback import Fallback
from calibration.sensitivity import tflite_activation_errors

from ..artifacts import QuantParams
from ..compat import toolchain_of
from ..errors import ConversionError
from ..profile import IODtype, Layout
from ..onnxmodel import has_grouped_conv, onnx_output_shapes
from ..tflite_file import check_builtin_only, int8_constants, layout_back, read_tflite
from .onnx2tf_job import (FALLBACK_REPORT, INT8_MODEL, ONNX2TF_OUTPUTS, PARITY_REPORT, PHASE, RANGES_REPORT,
                          TAIL_REPORT, TFLiteJob)
from .onnx_int8 import SENSITIVITY_SAMPLES, tail_note
from .registry import Format, register_format

# onnx2tf validates any 4-D 3-channel input against this file and downloads it when it is not in
# the working directory; the stage writes it there from the user's own calibration data.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_PROGRESS = re.compile(r"(\d+) / (\d+)")


def write_onnx2tf_sample(images_nhwc: np.ndarray, directory: Path) -> None:
    """20 RGB 128x128 images in [0, 1] made from the user's images, so that onnx2tf never downloads its own."""
    import torch

    picks = images_nhwc[np.linspace(0, len(images_nhwc) - 1, 20).astype(int)]
    tensor = torch.from_numpy(np.ascontiguousarray(picks.transpose(0, 3, 1, 2)))
    tensor = torch.nn.functional.interpolate(tensor, size=(128, 128), mode="bilinear", align_corners=False)
    rgb = tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor[:, :3]
    np.save(directory / ONNX2TF_SAMPLE, rgb.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32))


def convert_tflite(
    onnx_path: Path, calibration_inputs_nchw: np.ndarray, raw_images_nhwc: np.ndarray, out_dir: Path,
    quant_type: str, io_dtype: IODtype, layout: Layout, pseudo_ops: tuple[str, ...] = (), grouped_conv: bool = True,
    fallback_tolerance: float | None = None, fallback_from: int = 0, int8: bool = True,
    ranges: CalibrationRanges | None = None, float_tail: bool = False, detect: dict | None = None,
) -> dict[str, Path]:
    """Convert to TFLite; returns {"fp32", "fp16"} and with ``int8`` "int8" -> file in ``out_dir``. Each must hold
    builtin ops only (a one-line error names the first that does not, and its layer). The int8 model takes
    ``ranges`` (of ``onnx_path``) where its tensors match, "ranges" -> how many did (JSON); without them, the TFLite
    converter's own. With ``fallback_tolerance`` (for a float-I/O int8 model only: the caller decides),
    ops of the int8 model may be kept in float until it is within that many top-1 points of the float model (with a
    detector's decoder options ``detect``: mAP50 points against its boxes) on the calibration samples from
    ``fallback_from`` on; "fallback" -> what was tried (JSON) is then returned too. The float models are compared
    with ``onnx_path`` before any int8 model is made (``float_parity``; the figures in ``out_dir / PARITY_REPORT``): a
    file that does not reproduce it is a ConversionError naming the output, the channel and the first diverging op."""
    out_dir = out_dir.resolve()  # onnx2tf runs in its own working directory
    work = out_dir / "onnx2tf"
    work.mkdir(parents=True, exist_ok=True)
    model_copy = work / "model.onnx"  # onnx2tf overwrites its input with the simplified graph
    shutil.copyfile(onnx_path, model_copy)
    calib = calibration_inputs_nchw if layout is Layout.NCHW else calibration_inputs_nchw.transpose(0, 2, 3, 1)
    np.save(work / "calibration.npy", np.ascontiguousarray(calib, dtype=np.float32))
    write_onnx2tf_sample(raw_images_nhwc, work)
    if ranges is not None:
        ranges.save(work / "ranges.json")
    job = TFLiteJob(
        onnx_path=str(model_copy), output_dir=str(work / "tf"), calibration_npy=str(work / "calibration.npy"),
        channels=int(calibration_inputs_nchw.shape[1]), quant_type=quant_type, io_dtype=io_dtype.value,
        keep_nchw=layout is Layout.NCHW, pseudo_ops=tuple(pseudo_ops), grouped_conv=grouped_conv,
        fallback_tolerance=fallback_tolerance, fallback_from=fallback_from, int8=int8,
        ranges_json=None if ranges is None else str(work / "ranges.json"), float_tail=float_tail, detect=detect,
        reference_onnx=str(Path(onnx_path).resolve()),
    )
    (work / "job.json").write_text(json.dumps(asdict(job)))
    env = dict(os.environ)
    # onnx2tf runs the `onnxsim` program by name: put this interpreter's bin folder first on PATH.
    env["PATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(sys.executable)), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # a detector's user decoder (package.module:function) imports in the child as it does here: from the user's
    # working directory (the child works in its own)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), os.getcwd()) if p)
    log_path = out_dir / "onnx2tf.log"
    with open(log_path, "w") as log, tqdm(desc="convert to TFLite (onnx2tf)", unit="op") as bar:
        process = subprocess.Popen(
            [os.path.abspath(sys.executable), "-m", "pipeline.formats.onnx2tf_job", str(work / "job.json")],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for line in process.stdout:
            log.write(line)
            if line.startswith(PHASE):
                bar.set_description(line[len(PHASE):].strip())
                continue
            match = _PROGRESS.search(line)
            if match:
                bar.total = int(match.group(2))
                bar.n = int(match.group(1))
                bar.refresh()
        code = process.wait()
    parity_report = work / "tf" / PARITY_REPORT
    parity = json.loads(parity_report.read_text()) if parity_report.is_file() else None
    if parity is not None and parity["failure"]:
        raise ConversionError(f"{onnx_path.name}: {parity['failure']}; full log: {log_path}")
    outputs = {key: work / "tf" / name for key, name in ONNX2TF_OUTPUTS.items()}
    if int8:
        outputs["int8"] = work / "tf" / INT8_MODEL
    # a non-builtin op first, named with its layer, from whichever model was written: the int8 model, made after the
    # float ones from the same graph, fails on it
    for key, path in outputs.items():
        if path.is_file():
            check_builtin_only(f"{onnx_path.name} as tflite-{key}", read_tflite(path))
    if code != 0 or not all(p.is_file() for p in outputs.values()):
        raise ConversionError(f"{onnx_path.name}: onnx2tf failed ({_last_error(log_path)}); full log: {log_path}")
    if parity is not None:  # beside the models, not among them: every value returned is a file the caller may read
        os.replace(parity_report, out_dir / PARITY_REPORT)
    for key, report in (("fallback", FALLBACK_REPORT), ("ranges", RANGES_REPORT), ("tail", TAIL_REPORT)):
        if (work / "tf" / report).is_file():
            outputs[key] = work / "tf" / report
    final = {}
    for key, path in outputs.items():
        final[key] = out_dir / (f"model_{key}.tflite" if path.suffix == ".tflite" else path.name)
        os.replace(path, final[key])
    shutil.rmtree(work / "tf", ignore_errors=True)
    return final


def _last_error(log_path: Path) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in log_path.read_text(errors="replace").splitlines()]
    errors = [l for l in lines if l.startswith(("ERROR", "Error")) or "Error:" in l]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def tflite_io(path: Path, output_names: list[str] | None = None, output_shapes: list[list[int]] | None = None) -> dict:
    """Input name/shape/dtype and the I/O quantization of a .tflite file, read by the interpreter itself; with
    several outputs, each (by name, with its quantization) in the order of ``output_names`` (the reference's, which
    the file's signature names), else in the file's order; one that onnx2tf turned from the reference's NCHW
    ``output_shapes`` into NHWC says how to turn it back ("transpose")."""
    from ai_edge_litert.interpreter import Interpreter

    from board_runtime.sessions import output_order, tflite_output_names

    interpreter = Interpreter(model_path=str(path))
    inp, details = interpreter.get_input_details()[0], interpreter.get_output_details()
    names = tflite_output_names(interpreter)

    def quant(detail):
        scale, zero_point = detail["quantization"]
        return {"scale": float(scale), "zero_point": int(zero_point)} if scale else None

    order = output_order(names, output_names) if output_names else None
    if order is None:  # the file's own order and names
        order, output_names = list(range(len(details))), names
    first = details[order[0]]
    described = [{"name": name, "index": i, "quant": quant(details[i]), "shape": [int(d) for d in details[i]["shape"]],
                  **layout_back(details[i]["shape"], output_shapes[position] if output_shapes else None)}
                 for position, (name, i) in enumerate(zip(output_names, order))]
    return {
        "input_name": inp["name"], "input_shape": tuple(int(d) for d in inp["shape"]),
        "output_shape": [int(d) for d in first["shape"]],
        "input_dtype": np.dtype(inp["dtype"]).name, "output_dtype": np.dtype(first["dtype"]).name,
        "input_quant": quant(inp), "output_quant": quant(first),
        "outputs": described if len(details) > 1 or any("transpose" in o for o in described) else [],
    }


def conversion_step(plan, target, int8: bool) -> dict:
    """The one conversion step of the three kinds (each row picks its file from it): of the export for the float
    kinds; for the int8 kind, of the model ``plan.int8_model`` gives (the same step when its weights are the
    export's)."""
    model, onnx_key = plan.int8_model(target) if int8 else plan.build("onnx-fp32", target)
    samples = plan.calibration_samples()
    # Whether this conversion's int8 model is the target's tflite-int8 kind.
    serves_int8 = "tflite-int8" in target.artifacts and plan.int8_model(target)[0] is model
    # The float TFLite the int8 one is compared with, tensor by tensor: of the model as given.
    separate = serves_int8 and "variant" in model["data"]
    reference = conversion_step(plan, target, int8=False) if separate else None
    scheme = target.int8
    pseudo_ops = plan.config.tflite_pseudo_ops
    # Only the int8 model goes to an accelerator's compiler; the float ones keep grouped convolutions, which the
    # CPU runs faster than their split into one convolution per group. A model without any makes one conversion.
    grouped_conv = toolchain_of(target).grouped_conv or not int8 or not has_grouped_conv(plan.path(model, onnx_key))
    # ops kept in float where the int8 model misses the tolerance, on boards whose runtime runs them beside int8 ones
    # (float-I/O int8: the fallback's trial runs feed the float calibration samples); a detector's decoding stays in
    # float there from the start
    float_beside_int8 = serves_int8 and toolchain_of(target).float_ops_in_int8 and scheme.io_dtype is IODtype.FLOAT32
    fallback = plan.task_row.fallback_tolerance(target) if float_beside_int8 else None
    float_tail = float_beside_int8 and plan.task_row.float_tail
    # the int8 model takes the ranges onnx-int8 has (and the weights were tuned through); a conversion that serves
    # no int8 kind makes the float models only
    ranges = plan.calibration_ranges(target) if serves_int8 else None
    variant = plan.variant(model)
    # float files do not depend on the int8 scheme: boards that differ only in it share their float conversion
    int8_scheme = f"-{scheme.granularity.value}-{scheme.io_dtype.value}" if serves_int8 else ""
    name = (f"convert-opset{model['data']['opset']}{variant}{int8_scheme}-{target.input_layout.value}"
            + "".join(f"-{op}" for op in pseudo_ops)
            + ("" if grouped_conv else "-no-grouped-conv") + ("-float" if ranges is None else
                                                               f"-{ranges['data']['method']}")
            + ("" if fallback is None else f"-tol{fallback:g}") + ("-float-tail" if float_tail else ""))

    def produce(tmp: Path) -> dict:
        outputs = convert_tflite(plan.path(model, onnx_key), np.load(plan.path(samples, "inputs"), mmap_mode="r"),
                                 np.load(plan.path(samples, "images"), mmap_mode="r"), tmp, scheme.granularity.value,
                                 scheme.io_dtype, target.input_layout, pseudo_ops, grouped_conv, fallback,
                                 plan.untrained_from(model), int8=serves_int8,
                                 ranges=None if ranges is None else CalibrationRanges.load(plan.path(ranges, "ranges")),
                                 float_tail=float_tail, detect=plan.decoder if fallback is not None else None)
        reports = {}
        for key in ("fallback", "ranges", "tail"):  # the job's reports: into the record, not beside the models
            if key in outputs:
                report = outputs.pop(key)
                reports[key] = json.loads(report.read_text())
                report.unlink()
        parity = tmp / PARITY_REPORT
        reports["parity"] = json.loads(parity.read_text())
        parity.unlink()
        names = plan.model_record["data"].get("output_names")
        shapes = onnx_output_shapes(plan.path(model, onnx_key))
        record = {"files": {k: p.name for k, p in outputs.items()},
                  "io": {k: tflite_io(p, names, shapes) for k, p in outputs.items()},
                  "float_parity": reports["parity"]}
        if not serves_int8:
            return record
        weights, kept = plan.weights_note(model, int8_constants(outputs["int8"]), "tflite")
        inputs = np.load(plan.path(samples, "inputs"), mmap_mode="r")[:SENSITIVITY_SAMPLES]
        errors = tflite_activation_errors(plan.path(reference, "fp32") if separate else outputs["fp32"],
                                          outputs["int8"], inputs, target.input_layout is Layout.NHWC, names)
        mixed = {"fallback": reports["fallback"]} if "fallback" in reports else {}
        return {**record, "calibration": {"int8": "; ".join(n for n in (
                    ranges_set_note(ranges["data"], reports["ranges"], samples["data"]["num_samples"]), weights,
                    tail_note(reports.get("tail", [])), Fallback(**mixed["fallback"]).note(fallback) if mixed else "")
                    if n)},
                "weights_kept": list(kept), "ranges_set": reports["ranges"],
                "sensitivity": {"samples": len(inputs), "tensors": [e.to_json() for e in errors]}, **mixed}

    params = {**({"granularity": scheme.granularity.value, "io": scheme.io_dtype.value} if serves_int8 else {}),
              "layout": target.input_layout.value, "pseudo_ops": list(pseudo_ops),
              **({} if grouped_conv else {"grouped_conv": False}),
              **({} if fallback is None else {"fallback_tolerance": fallback}),
              **({"float_tail": True} if float_tail else {})}
    needs = [model, samples, *([reference] if separate else []), *([ranges] if ranges is not None else [])]
    return plan.shared_step(name, "convert", params, needs, produce)


def ranges_set_note(ranges: dict, applied: dict, num_samples: int) -> str:
    """Where the int8 TFLite model's activation ranges come from."""
    return (f"{ranges['label']} ranges of the calibration step (as onnx-int8) on {applied['from_pipeline']} of the "
            f"{applied['tensors']} tensors the TensorFlow Lite converter quantizes, its own calibration on the same "
            f"{num_samples} samples on the others")


def recorded_io(record: dict, key: str, target, input_shape: tuple[int, ...]) -> dict:
    """As the interpreter reported it when the step read the file back."""
    io = record["data"]["io"][key]
    quant = lambda q: QuantParams(**q) if q else None  # noqa: E731
    return {"input_name": io["input_name"], "input_shape": tuple(io["input_shape"]),
            "input_layout": io.get("input_layout", target.input_layout.value), "input_dtype": io["input_dtype"],
            "output_dtype": io["output_dtype"], "input_quant": quant(io["input_quant"]),
            "output_quant": quant(io["output_quant"]), "outputs": tuple(io.get("outputs", ()))}


# Where each TFLite kind comes from, by the framework of the run's model: converted from the ONNX export, or the
# user's .tflite file itself (the model step's record holds it and its I/O).
def _converted(plan, target, key: str) -> tuple[dict, str]:
    return conversion_step(plan, target, int8=key == "int8"), key


FROM_FRAMEWORK = {"torch": _converted, "onnx": _converted,
                  "tflite": lambda plan, target, key: (plan.model_record, "tflite")}

for _precision, _label in (("fp32", "TFLite fp32"), ("fp16", "TFLite fp16"), ("int8", "TFLite int8")):
    register_format(Format(
        kind=f"tflite-{_precision}", format="tflite", precision=_precision, label=_label, stage="convert",
        session="tflite", runtimes=("litert", "tflite-runtime"), io=recorded_io,
        build=lambda plan, target, key=_precision: FROM_FRAMEWORK[plan.source.row.framework](plan, target, key),
    ))
