"""Where and in which precision the training loops run: ``--device auto|cpu|cuda[:N]``, ``--precision auto|fp32|
bf16|fp16``. One ``Compute`` serves teacher training, block-wise distillation and fine-tuning alike.

``auto`` precision is mixed precision where the hardware has it: bf16 (or fp16 with loss scaling, on GPUs without
bf16) on CUDA; on a CPU, bf16 where it has bf16 instructions (``avx512_bf16``/``amx_bf16``). On a CPU, depthwise
convolutions stay in fp32 inside a bf16 region: PyTorch has no fast bf16 depthwise kernel on CPU, and a
depthwise-heavy student trained 1.75x slower in bf16 than in fp32 (0.5x-1.6x overall with them kept in fp32,
measured on this project's students).
"""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from . import allocator
from .config import ComputeOptions
from .errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) under which it has no bf16 kernels: a CPU told to act as an AVX2-only one
# trains in fp32 as such a CPU would, so that the slow machines' figures can be measured on a fast one.
ISAS_WITHOUT_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni"}


def _cpuinfo() -> tuple[str, set[str]]:
    """This CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; empty where it cannot tell)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU", set()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return name, set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (False where it cannot tell, or where ``ONEDNN_MAX_CPU_ISA`` caps
    oneDNN below them)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower() in ISAS_WITHOUT_BF16:
        return False
    return bool(_cpuinfo()[1] & {"avx512_bf16", "amx_bf16"})


def cpu_summary() -> str:
    """This CPU as timings should quote it: its model name, threads, and the instruction sets that change training
    and int8 speed 2x (AVX2 only, or AVX-512, bf16, AMX), with an ``ONEDNN_MAX_CPU_ISA`` cap where one is set."""
    name, flags = _cpuinfo()
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{name} ({os.cpu_count()} threads; {', '.join(found) or 'no AVX2'}"
            f"{f'; capped at ONEDNN_MAX_CPU_ISA={cap}' if cap else ''})")


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: bad value {name!r}: this machine has no CUDA device (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); valid: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else int(os.environ.get("LOCAL_RANK", "0"))  # torchrun: one
        if index >= torch.cuda.device_count():  # GPU per process
            raise ConfigError(f"device: bad value {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    return torch.device("cpu")


def _precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("precision: bad value 'fp16' on a CPU (no float16 training kernels there); valid: auto, fp32, "
                          "bf16")
    return name


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str  # fp32, bf16 or fp16, resolved

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "allocator": allocator.name()}

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, DTYPES.get(self.precision), enabled=self.mixed)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device, channels-last (faster convolutions on CPU and on tensor cores)."""
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch

    @contextlib.contextmanager
    def training(self, *modules: nn.Module) -> Iterator["LossScaler"]:
        """``modules`` on the device and channels-last for the loop; on a CPU in bf16, their depthwise convolutions
        in fp32. Afterwards the modules are contiguous again (what export and TorchScript expect), still on the
        device. Yields the loss scaler of the loop."""
        hooks = []
        for module in modules:
            module.to(self.device, memory_format=torch.channels_last)
            if self.mixed and self.device.type == "cpu":
                for layer in filter(_depthwise, module.modules()):
                    hooks += [layer.register_forward_pre_hook(_leave_autocast),
                              layer.register_forward_hook(_enter_autocast)]
        try:
            yield LossScaler(self.precision == "fp16")
        finally:
            for hook in hooks:
                hook.remove()
            for module in modules:
                module.to(memory_format=torch.contiguous_format)


def _leave_autocast(module, args):
    if not torch.is_autocast_enabled("cpu"):
        return None
    torch.set_autocast_enabled("cpu", False)
    module._autocast_left = True
    return tuple(a.float() if torch.is_tensor(a) else a for a in args)


def _enter_autocast(module, args, output):
    if getattr(module, "_autocast_left", False):
        module._autocast_left = False
        torch.set_autocast_enabled("cpu", True)
    return None


class LossScaler:
    """fp16's loss scaling (``torch.amp.GradScaler``); a pass-through in fp32 and bf16."""

    def __init__(self, enabled: bool):
        self.scaler = torch.amp.GradScaler("cuda") if enabled else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def resolve(options: ComputeOptions) -> Compute:
    """The device and precision that ``options`` name on this machine; a one-line error where it has neither."""
    device = _device(options.device)
    return Compute(device, _precision(options.precision, device))
