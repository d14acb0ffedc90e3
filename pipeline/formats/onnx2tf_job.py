"""The onnx2tf conversion of one job, in a child process: ``python -m pipeline.formats.onnx2tf_job job.json``.

onnx2tf calls ``sys.exit`` on errors and changes TensorFlow's global state, so it never runs in the pipeline's own
process (``tflite.convert_tflite`` starts this module and reads its log).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


ONNX2TF_OUTPUTS = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite"}  # the float models it writes
INT8_MODEL = "model_int8.tflite"  # the int8 model the job makes from onnx2tf's saved model
PARITY_REPORT = "float_parity.json"  # the float models against the ONNX model (``float_parity``)
FALLBACK_REPORT = "int8_fallback.json"  # what the mixed-precision fallback tried, beside the models
RANGES_REPORT = "int8_ranges.json"  # how many tensors took the pipeline's ranges
TAIL_REPORT = "int8_float_tail.json"  # the ops of a detector's decoding left in float
PHASE = "pipeline-phase: "  # a log line that starts with it names what the job does now (shown in the progress bar)


@dataclass(frozen=True)
class TFLiteJob:
    onnx_path: str
    output_dir: str
    calibration_npy: str  # preprocessed inputs in the TFLite input layout
    channels: int
    quant_type: str  # an Int8Granularity value
    io_dtype: str  # dtype of the full-integer model's input and output
    keep_nchw: bool
    pseudo_ops: tuple[str, ...] = ()  # ops onnx2tf writes as builtin approximations (its -rtpo), e.g. Erf
    grouped_conv: bool = True  # False: no grouped CONV_2D (version 6, which the Edge TPU compiler refuses)
    # points the int8 model may disagree with the float one on the calibration samples before ops are kept in float
    # (tflite_mixed; float-I/O int8 only): top-1 points, or with ``detect`` mAP50 points against the float model's
    # boxes; None: all int8, whatever it costs
    fallback_tolerance: float | None = None
    fallback_from: int = 0  # the first calibration sample the fallback judges on: those before trained the weights
    int8: bool = True  # make the int8 model (else the float ones only)
    # CalibrationRanges (JSON) of the ONNX model ``reference_onnx`` that the int8 model takes where its tensors match;
    # None: the TFLite converter's own calibration
    ranges_json: str | None = None
    float_tail: bool = False  # a detector's decoding (the ops after the last convolution) left in float
    detect: dict | None = None  # a detector's decoder options (board_runtime.detection), for the fallback's judge
    reference_onnx: str | None = None  # the ONNX model as given (onnx2tf rewrites ``onnx_path``), the floats' truth


def _depthwise_input_in_nhwc(make_node):
    """Wraps onnx2tf 1.29's Conv ``make_node``, which tests for a depthwise convolution (group == input channels)
    on the input's shape as it arrives, before transposing an input that arrives in ONNX's layout (NCHW: typically
    the output of a residual Add) to NHWC. Such a depthwise convolution is taken for a grouped one: a grouped CONV_2D,
    or with grouped convolutions disabled (Coral) one CONV_2D per channel between a SPLIT and a CONCATENATION, which
    the int8 ranges and weights then do not match. onnx2tf fixed it upstream (PR 959) after 1.29.24, the last
    release for Python 3.11. So this hands such an input over already in NHWC, as onnx2tf would transpose it, and
    puts it back after."""
    import tensorflow as tf

    def wrapped(*, graph_node, tf_layers_dict, **kwargs):
        source = tf_layers_dict.get(graph_node.inputs[0].name, {})
        tensor = source.get("tf_node")
        onnx_shape = [d if isinstance(d, int) else None for d in (graph_node.inputs[0].shape or [])]
        depthwise_in_nchw = (
            len(onnx_shape) == 4 and onnx_shape[1] == graph_node.attrs.get("group", 1) != 1
            and not isinstance(tensor, (np.ndarray, type(None))) and list(tensor.shape) == onnx_shape
            and len(set(onnx_shape[1:])) > 1  # onnx2tf leaves C == H == W alone
        )
        if not depthwise_in_nchw:
            return make_node(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)
        source["tf_node"] = tf.transpose(tensor, [0, 2, 3, 1])
        try:
            return make_node(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)
        finally:
            source["tf_node"] = tensor

    return wrapped


def run_job(job: TFLiteJob) -> None:
    import onnx2tf
    import onnx2tf.ops.Conv  # onnx2tf looks each op's module up by name at every node

    onnx2tf.ops.Conv.make_node = _depthwise_input_in_nhwc(onnx2tf.ops.Conv.make_node)
    zeros = np.zeros((1, 1, 1, job.channels) if not job.keep_nchw else (1, job.channels, 1, 1), np.float32)
    onnx2tf.convert(
        input_onnx_file_path=job.onnx_path,
        output_folder_path=job.output_dir,
        output_signaturedefs=True,  # the saved model the int8 model is made from
        # the calibration file already holds normalised inputs: mean 0, std 1
        custom_input_op_name_np_data_path=[["input", job.calibration_npy, zeros, zeros + 1.0]],
        keep_ncw_or_nchw_or_ncdhw_input_names=["input"] if job.keep_nchw else None,
        copy_onnx_input_output_names_to_tflite=True,
        replace_to_pseudo_operators=[op.lower() for op in job.pseudo_ops],  # onnx2tf matches lower-case names
        disable_group_convolution=not job.grouped_conv,
    )
    if job.reference_onnx is not None:
        from .float_parity import PARITY_SAMPLES, check_float_files

        print(f"{PHASE}checking the float models against the ONNX model", flush=True)
        out = Path(job.output_dir)
        samples = np.load(job.calibration_npy, mmap_mode="r")[:PARITY_SAMPLES]
        parity = check_float_files(Path(job.reference_onnx), {k: out / name for k, name in ONNX2TF_OUTPUTS.items()},
                                   samples if job.keep_nchw else samples.transpose(0, 3, 1, 2), not job.keep_nchw)
        (out / PARITY_REPORT).write_text(json.dumps(parity))
        if parity["failure"]:
            return  # a broken float conversion is never quantized
    if job.int8:
        write_int8(job)


def write_int8(job: TFLiteJob) -> None:
    """The int8 model (``INT8_MODEL``) from onnx2tf's saved model: calibrated once on the job's samples, with the
    pipeline's ranges where given, then quantized; then, with a tolerance, the fallback re-quantizes that same
    calibrated model with ops left in float."""
    from calibration.methods import CalibrationRanges
    from ..profile import Int8Granularity
    from .tflite_int8 import calibrate, quantize, set_ranges

    out = Path(job.output_dir)
    inputs = np.load(job.calibration_npy, mmap_mode="r")
    print(f"{PHASE}int8: calibrating on {len(inputs)} samples", flush=True)
    calibrated = calibrate(out, inputs)
    if job.ranges_json is not None:
        print(f"{PHASE}int8: setting the pipeline's ranges", flush=True)
        ranges = {name: (r.low, r.high) for name, r in CalibrationRanges.load(Path(job.ranges_json)).ranges.items()}
        calibrated, applied = set_ranges(calibrated, Path(job.reference_onnx), ranges, inputs, job.keep_nchw)
        (out / RANGES_REPORT).write_text(json.dumps(applied.to_json()))

    tail: list[str] = []

    def quantize_to(in_float: list[str], path: Path) -> None:
        path.write_bytes(quantize(calibrated, Int8Granularity(job.quant_type), job.io_dtype, [*tail, *in_float]))

    quantize_to([], out / INT8_MODEL)
    if job.float_tail:
        from calibration.sensitivity import tflite_tail

        tail = tflite_tail(out / INT8_MODEL)
        quantize_to([], out / INT8_MODEL)
        (out / TAIL_REPORT).write_text(json.dumps(tail))
    if job.fallback_tolerance is not None:
        print(f"{PHASE}int8: fallback check", flush=True)
        from calibration.fallback import TOP1
        from .tflite_mixed import keep_ops_in_float

        judge = TOP1
        if job.detect is not None:
            from ..detection.metrics import reference_map50_judge

            judge = reference_map50_judge(job.detect, inputs.shape[2:4] if job.keep_nchw else inputs.shape[1:3])
        keep_ops_in_float(quantize_to, inputs, Path(job.onnx_path), out / "model_float32.tflite", out / INT8_MODEL,
                          job.fallback_tolerance, judge, out / FALLBACK_REPORT, job.fallback_from)


if __name__ == "__main__":
    run_job(TFLiteJob(**json.loads(Path(sys.argv[1]).read_text())))
