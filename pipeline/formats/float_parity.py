"""A float TFLite conversion checked against the ONNX model it was made from, right after the conversion: every
output, channel by channel, on real samples, as the ONNX export is checked against PyTorch.

A channel's error is its largest absolute difference over the samples divided by its own largest magnitude (floored
at a thousandth of the whole output's, so that a channel that stays near zero is not judged by noise): a detector's
box rows (hundreds of pixels) and class-score rows (0 to 1) are each judged on their own scale, which one figure over
the whole output would not do. Where a file misses, the first ONNX tensor that no tensor of the TFLite file
reproduces (paired by value, whatever the layout), with everything after it wrong too, names the op to look at.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from board_runtime.sessions import output_order, tflite_output_names
from calibration.runs import feed_tflite, ort_session, tflite_interpreter, with_outputs

from ..tflite_file import layout_back

PARITY_SAMPLES = 8
# The largest channel error a float file may have: fp32 conversions here stay below 1e-3 (YOLOv8n at 320 and 640:
# 2e-6); fp16 weights and activations reach 0.024 on YOLOv8n's class scores; a broken conversion is off by the
# channel's whole range.
TOLERANCES = {"fp32": 0.01, "fp16": 0.1}
FLOOR = 1e-3  # of the output's largest magnitude


@dataclass(frozen=True)
class OutputParity:
    output: str
    channel: int  # the worst one, along the ONNX output's axis 1 (the whole output for a rank-2 one)
    error: float  # its largest difference over its largest magnitude
    max_abs: float  # the largest difference anywhere in the output

    def to_json(self) -> dict:
        return asdict(self)


def channel_errors(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per channel (axis 1 of a batch of outputs of rank >= 3, else one channel): largest |got - want| over the
    channel's largest |want|, floored at ``FLOOR`` times the largest |want| of the output."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want.ndim < 3:
        want, got = want.reshape(len(want), 1, -1), got.reshape(len(got), 1, -1)
    axes = tuple(a for a in range(want.ndim) if a != 1)
    scale = np.maximum(np.abs(want).max(axis=axes), max(FLOOR * float(np.abs(want).max()), 1e-12))
    return np.abs(got - want).max(axis=axes) / scale


def in_reference_layout(got: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A TFLite output laid out as the ONNX one of ``shape`` (onnx2tf turns NCHW outputs into NHWC: turned back as the
    board's runtime turns it, ``tflite_file.layout_back``), or None when it cannot be."""
    if got.shape == tuple(shape):
        return got
    perm = layout_back(got.shape, list(shape)).get("transpose")
    return got.transpose(perm) if perm else None


def onnx_outputs(onnx_path: Path, inputs_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the ONNX model on ``inputs_nchw``, one sample at a time, stacked: {name: (samples, ...)}."""
    session = ort_session(onnx_path)
    input_name, names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    runs = [session.run(None, {input_name: sample[None]}) for sample in np.asarray(inputs_nchw, np.float32)]
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def float_parity(reference: dict[str, np.ndarray], tflite_path: Path, inputs_nchw: np.ndarray,
                 nhwc: bool) -> list[OutputParity]:
    """Every output of the float TFLite file against ``reference`` (``onnx_outputs`` of the same inputs); a ValueError
    names an output the file lacks or lays out otherwise."""
    names = list(reference)
    interpreter = tflite_interpreter(tflite_path, keep_all=False)
    details = interpreter.get_output_details()
    order = output_order(tflite_output_names(interpreter), names) or (list(range(len(names)))
                                                                       if len(details) == len(names) else None)
    if order is None:
        raise ValueError(f"{tflite_path.name} has {len(details)} outputs, the ONNX model {len(names)} "
                         f"({', '.join(names)})")
    got: list[list[np.ndarray]] = [[] for _ in names]
    for sample in np.asarray(inputs_nchw, np.float32):
        feed_tflite(interpreter, sample, nhwc)
        for i, name in enumerate(names):
            wanted = (1, *reference[name].shape[1:])
            output = in_reference_layout(interpreter.get_tensor(details[order[i]]["index"]), wanted)
            if output is None:
                raise ValueError(f"{tflite_path.name}: output '{name}' is "
                                 f"{list(details[order[i]]['shape'])}, the ONNX model's {list(wanted)}")
            got[i].append(output)
    parity = []
    for name, g in zip(names, got):
        w, g = reference[name], np.concatenate(g)
        errors = channel_errors(w, g)
        worst = int(np.nanargmax(errors)) if not np.isnan(errors).all() else 0
        parity.append(OutputParity(name, worst, float(errors[worst]), float(np.abs(w - g).max())))
    return parity


def first_divergence(onnx_path: Path, tflite_path: Path, sample_nchw: np.ndarray, nhwc: bool,
                     tolerance: float) -> str | None:
    """The first ONNX node (in graph order) whose output no tensor of the TFLite file reproduces on one sample, on a
    path of such tensors to an output; as "Op 'name'", or None where the outputs are reproduced."""
    import onnx

    model = onnx.load(str(onnx_path))
    produced = [(node, out) for node in model.graph.node for out in node.output if out]
    names = [out for _, out in produced]
    session = ort_session(with_outputs(model, names), unfused=True)
    values = dict(zip([o.name for o in session.get_outputs()],
                      session.run(None, {session.get_inputs()[0].name: np.asarray(sample_nchw, np.float32)[None]})))
    interpreter = tflite_interpreter(tflite_path)
    feed_tflite(interpreter, np.asarray(sample_nchw, np.float32), nhwc)
    by_size: dict[int, list[np.ndarray]] = {}
    for detail in interpreter.get_tensor_details():
        try:
            tensor = interpreter.get_tensor(detail["index"])
        except ValueError:  # a tensor the interpreter did not keep
            continue
        if tensor.dtype == np.float32 and tensor.size > 1:
            by_size.setdefault(tensor.size, []).append(np.sort(tensor, axis=None))

    def reproduced(value: np.ndarray) -> bool:
        if value.dtype != np.float32 or value.size <= 1:
            return True  # shapes and indices: not what a float conversion gets wrong
        ordered = np.sort(value, axis=None)
        limit = tolerance * max(float(np.abs(ordered).max()), 1e-12)
        return any(float(np.abs(c - ordered).max()) <= limit for c in by_size.get(value.size, ()))

    ok = {name: reproduced(values[name]) for name in names if name in values}
    outputs = {o.name for o in model.graph.output}
    # a tensor is wrong to the end when it is not reproduced and some path of tensors not reproduced leads from it to an
    # output: one fused away (a convolution's before its activation) has reproduced successors only
    wrong_to_end: dict[str, bool] = {}
    consumers: dict[str, list[str]] = {}
    for node, out in produced:
        for name in node.input:
            consumers.setdefault(name, []).append(out)
    for _, out in reversed(produced):  # ONNX graphs are topologically sorted: successors first, backwards
        wrong_to_end[out] = not ok.get(out, True) and (out in outputs or any(wrong_to_end.get(after, False)
                                                                             for after in consumers.get(out, ())))
    for node, out in produced:
        if wrong_to_end[out]:
            return f"{node.op_type} '{node.name or out}'"
    return None


def check_float_files(onnx_path: Path, files: dict[str, Path], inputs_nchw: np.ndarray, nhwc: bool) -> dict:
    """{precision: [OutputParity as JSON]} for the float TFLite ``files`` ({"fp32": path, "fp16": path}), and
    "failure": a one-line message naming the worst output and channel and the first diverging op (None when every
    file is within its tolerance)."""
    report: dict = {"samples": len(inputs_nchw), "tolerances": {k: TOLERANCES[k] for k in files}, "failure": None}
    reference = onnx_outputs(onnx_path, inputs_nchw)
    for precision, path in files.items():
        try:
            parity = float_parity(reference, path, inputs_nchw, nhwc)
        except ValueError as exc:
            report["failure"] = f"tflite-{precision}: {exc}"
            return report
        report[precision] = [p.to_json() for p in parity]
        worst = max(parity, key=lambda p: p.error if p.error == p.error else float("inf"))
        if not worst.error <= TOLERANCES[precision]:  # also NaN
            where = first_divergence(onnx_path, path, inputs_nchw[0], nhwc, TOLERANCES[precision])
            report["failure"] = (
                f"tflite-{precision} does not reproduce the ONNX model: output '{worst.output}' channel "
                f"{worst.channel} is off by {worst.error:.3g} of its range (tolerance {TOLERANCES[precision]:g}, "
                f"{len(inputs_nchw)} samples)" + (f"; first diverging op: {where}" if where else ""))
            return report
    return report
