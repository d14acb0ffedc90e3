"""torch-fp32: the model as a traced TorchScript file, which the model (or compress) step writes. It is the
reference of a run whose model is PyTorch code; the board has no torch, so bundles leave it out."""
from __future__ import annotations

from .registry import Format, float_io, register_format

register_format(Format(
    kind="torch-fp32", format="torch", precision="fp32", label="PyTorch fp32", stage="model", session="torch",
    runtimes=("torch",), build=lambda plan, target: (plan.model_record, "torchscript"), io=float_io,
    deployable=False,
))
