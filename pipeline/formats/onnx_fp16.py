"""onnx-fp16: fp16 weights and compute with fp32 inputs and outputs, as TensorRT and CUDA take them."""
from __future__ import annotations

from pathlib import Path

from .registry import Format, float_io, register_format


def convert_fp16(model_path: Path, out_path: Path) -> None:
    """fp16 weights and compute with fp32 inputs and outputs, as TensorRT and CUDA take them."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    onnx.save(model, str(out_path))


def build(plan, target) -> tuple[dict, str]:
    export, onnx_key = plan.build("onnx-fp32", target)

    def produce(tmp: Path) -> dict:
        convert_fp16(plan.path(export, onnx_key), tmp / "model_fp16.onnx")
        return {"files": {"onnx": "model_fp16.onnx"}}

    return plan.shared_step(f"fp16-opset{export['data']['opset']}", "quantize", {}, [export], produce), "onnx"


register_format(Format(kind="onnx-fp16", format="onnx", precision="fp16", label="ONNX fp16", stage="quantize",
                       session="onnx", runtimes=("onnxruntime", "onnxruntime-cuda"), build=build, io=float_io))
