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


FALLBACK_REPORT = "int8_fallback.json"  # what the mixed-precision fallback tried, beside the models


@dataclass(frozen=True)
class TFLiteJob:
    onnx_path: str
    output_dir: str
    calibration_npy: str  # preprocessed inputs in the TFLite input layout
    channels: int
    quant_type: str  # per-channel | per-tensor
    io_dtype: str  # dtype of the full-integer model's input and output
    keep_nchw: bool
    pseudo_ops: tuple[str, ...] = ()  # ops onnx2tf writes as builtin approximations (its -rtpo), e.g. Erf
    grouped_conv: bool = True  # False: no grouped CONV_2D (version 6, which the Edge TPU compiler refuses)
    # top-1 points the int8 model may disagree with the float one on the calibration samples before ops are kept in
    # float (tflite_mixed; float-I/O, per-channel int8 only); None: all int8, whatever it costs
    fallback_tolerance: float | None = None
    fallback_from: int = 0  # the first calibration sample the fallback judges on: those before trained the weights


def run_job(job: TFLiteJob) -> None:
    import onnx2tf

    zeros = np.zeros((1, 1, 1, job.channels) if not job.keep_nchw else (1, job.channels, 1, 1), np.float32)
    onnx2tf.convert(
        input_onnx_file_path=job.onnx_path,
        output_folder_path=job.output_dir,
        output_integer_quantized_tflite=True,
        quant_type=job.quant_type,
        # the calibration file already holds normalised inputs: mean 0, std 1
        custom_input_op_name_np_data_path=[["input", job.calibration_npy, zeros, zeros + 1.0]],
        input_quant_dtype=job.io_dtype,
        output_quant_dtype=job.io_dtype,
        keep_ncw_or_nchw_or_ncdhw_input_names=["input"] if job.keep_nchw else None,
        copy_onnx_input_output_names_to_tflite=True,
        replace_to_pseudo_operators=[op.lower() for op in job.pseudo_ops],  # onnx2tf matches lower-case names
        disable_group_convolution=not job.grouped_conv,
    )
    if job.fallback_tolerance is not None:
        from .tflite_mixed import keep_ops_in_float

        out = Path(job.output_dir)
        keep_ops_in_float(out, Path(job.calibration_npy), out / "model_float32.tflite",
                          out / "model_integer_quant.tflite", job.fallback_tolerance, out / FALLBACK_REPORT,
                          job.fallback_from)


if __name__ == "__main__":
    run_job(TFLiteJob(**json.loads(Path(sys.argv[1]).read_text())))
