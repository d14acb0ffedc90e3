"""One session class per way of running an artifact; a manifest's artifact names its session (``SESSIONS``).

A session loads one model file and runs a prepared batch: ``outputs`` gives every output tensor in the file's own
output order, ``run`` the first (a classifier's logits; what a timing calls). ``accelerators`` lists only what really runs
the model: the Edge TPU session exists for models that ``edgetpu_compiler`` produced (they carry its
custom op) and refuses any other, and a plain TFLite session never loads a delegate.
"""
from __future__ import annotations

import ctypes.util
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .registry import Registry

# TFLite runtimes in order of preference: (module with Interpreter, runtime name, distribution).
TFLITE_RUNTIMES = (("ai_edge_litert.interpreter", "litert", "ai-edge-litert"),
                   ("tflite_runtime.interpreter", "tflite-runtime", "tflite-runtime"),
                   ("tensorflow.lite", "tensorflow", "tensorflow"))
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
# The custom op that edgetpu_compiler puts in place of the part of the graph it maps to the Edge TPU.
EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"


def package_version(distribution: str) -> str:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return "unknown"


def edgetpu_library() -> str | None:
    """The Edge TPU runtime library's name where it is installed, else None."""
    name = EDGETPU_LIBRARY.get(platform.system())
    return name if name and ctypes.util.find_library("edgetpu") else None


def _tflite_interpreter_module():
    errors = []
    for module, name, distribution in TFLITE_RUNTIMES:
        try:
            return __import__(module, fromlist=["Interpreter"]), name, distribution
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise RuntimeError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime); " + "; ".join(errors))


def tflite_output_names(interpreter) -> list[str]:
    """The outputs' names in the interpreter's output order: its signature's names where it has one (converters
    name the tensors themselves "PartitionedCall:0" and the like, and may order them differently), else the
    tensors' own."""
    details = interpreter.get_output_details()
    try:
        signatures = interpreter._get_full_signature_list() or {}
    except (AttributeError, RuntimeError, ValueError):
        signatures = {}
    named = {index: name for name, index in next(iter(signatures.values()), {}).get("outputs", {}).items()}
    return [named.get(detail["index"], detail["name"]) for detail in details]


def output_order(names: list[str], wanted: list[str]) -> list[int] | None:
    """Where each of ``wanted`` (the reference's output names, in its order) is among a file's outputs ``names``: by
    name, else by the names a TensorFlow saved model gives the N-th output (output_0, output_1, ...: what the int8
    converter keeps of onnx2tf's); None when neither matches."""
    for expected in (list(wanted), [f"output_{i}" for i in range(len(wanted))]):
        if sorted(names) == sorted(expected):
            return [names.index(name) for name in expected]
    return None


class TFLiteSession:
    """A .tflite on the CPU, with the first TFLite runtime this machine has."""

    def __init__(self, path: str, threads: int, providers: list[str]):
        module, self.runtime, distribution = _tflite_interpreter_module()
        self.version = package_version(distribution)
        self.accelerators = self._accelerators(path)
        self.interpreter = module.Interpreter(model_path=path, num_threads=threads,
                                              experimental_delegates=self._delegates(module) or None)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()

    def _accelerators(self, path: str) -> list[str]:
        return []

    def _delegates(self, module) -> list:
        return []

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(detail["index"]) for detail in self.output_details]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_details[0]["index"])


class EdgeTPUSession(TFLiteSession):
    """A model compiled by ``edgetpu_compiler``, run through the Edge TPU delegate (libedgetpu)."""

    def _accelerators(self, path: str) -> list[str]:
        if EDGETPU_CUSTOM_OP not in Path(path).read_bytes():
            raise RuntimeError(f"{Path(path).name} holds no {EDGETPU_CUSTOM_OP.decode()}: it was not compiled by "
                               "edgetpu_compiler, so the Edge TPU would run none of it")
        self.library = edgetpu_library()
        if self.library is None:
            raise RuntimeError("the Edge TPU runtime (libedgetpu) is not installed: sudo apt-get install libedgetpu1-std")
        return ["edgetpu"]

    def _delegates(self, module) -> list:
        return [module.load_delegate(self.library)]


@functools.lru_cache(maxsize=None)  # one read of /proc/cpuinfo per process, not one per session
def int8_kernels_saturate() -> bool:
    """Whether ONNX Runtime's fused int8 kernels lose accuracy on this CPU: on x86 without VNNI they add pairs of
    uint8 x int8 products in 16 bits, which saturate (EfficientNet-Lite1's per-channel int8 model: 6.0 dB of logit
    SQNR fused, 15.8 dB exact, on an AVX2-only AMD EPYC). ARM's dot products and VNNI are exact."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, assume the kernels are fine
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


class OnnxSession:
    def __init__(self, path: str, threads: int, providers: list[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.exact_int8 = int8_kernels_saturate()
        if self.exact_int8:  # a QDQ model then runs dequantize, the float op, quantize: exact, and slower
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.runtime, self.version = "onnxruntime", ort.__version__
        available = ort.get_available_providers()
        wanted = [p for p in providers if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=wanted)
        self.accelerators = [p for p in self.session.get_providers() if p != "CPUExecutionProvider"]
        self.input_name = self.session.get_inputs()[0].name

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]


class TorchSession:
    """A TorchScript file (the host's reference; boards have no torch)."""

    def __init__(self, path: str, threads: int, providers: list[str]):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.runtime, self.version, self.accelerators = torch, "torch", torch.__version__, []
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            out = self.module(self.torch.from_numpy(x))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]


@dataclass(frozen=True)
class SessionKind:
    opens: type  # the session class: (path, threads, providers) -> a session
    runtimes: tuple[str, ...]  # the runtimes ``probe`` reports, any of which lets it run


SESSIONS: Registry[SessionKind] = Registry("session")
SESSIONS.register("tflite", SessionKind(TFLiteSession, tuple(name for _, name, _ in TFLITE_RUNTIMES)))
SESSIONS.register("edgetpu", SessionKind(EdgeTPUSession, ("edgetpu",)))
SESSIONS.register("onnx", SessionKind(OnnxSession, ("onnxruntime", "onnxruntime-cuda")))
SESSIONS.register("torch", SessionKind(TorchSession, ("torch",)))
