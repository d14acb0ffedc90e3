"""Target compatibility: what each board's own toolchain will do with an artifact (``base``), one row per
toolchain (``cpu``, ``edgetpu``, ``tensorrt``)."""
from . import cpu, edgetpu, tensorrt  # noqa: F401  each registers its row
from .base import ACCELERATED, CPU, REFUSED, TOOLCHAINS, Compatibility, OpPlacement, Toolchain, get_toolchain, toolchain_of

__all__ = ["ACCELERATED", "CPU", "REFUSED", "TOOLCHAINS", "Compatibility", "OpPlacement", "Toolchain",
           "get_toolchain", "toolchain_of"]
