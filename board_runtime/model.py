"""A bundle's manifest and one of its artifacts as a model that takes normalised NCHW inputs and gives logits."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .sessions import SESSIONS


def dequantize(y: np.ndarray, q: dict | None) -> np.ndarray:
    return (y.astype(np.float32) - q["zero_point"]) * q["scale"] if q else y.astype(np.float32)


class Model:
    """An artifact of a manifest, fed with normalised NCHW float32 inputs and returning float logits."""

    def __init__(self, artifact: dict, base: Path, threads: int, providers: list[str] = ()):
        self.artifact = artifact
        kind = SESSIONS.get(artifact.get("session"))
        if kind is None:
            raise SystemExit(f"error: artifact {artifact['kind']}: unknown session {artifact.get('session')!r}; "
                             f"this runtime has {', '.join(SESSIONS)} (rebuild the bundle with this pipeline)")
        started = time.perf_counter()
        self.session = kind.opens(str(base / artifact["path"]), threads, list(providers))
        self.load_seconds = time.perf_counter() - started

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        """Layout and input quantization for one batch of normalised NCHW float inputs."""
        a = self.artifact
        x = x_nchw.transpose(0, 2, 3, 1) if a["input_layout"] == "NHWC" else x_nchw
        if a["input_quant"]:
            q = a["input_quant"]
            info = np.iinfo(np.dtype(a["input_dtype"]))
            x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max)
        return np.ascontiguousarray(x.astype(a["input_dtype"]))

    def finish(self, y: np.ndarray) -> np.ndarray:
        return dequantize(y, self.artifact["output_quant"])

    def outputs(self, x_nchw: np.ndarray) -> list[np.ndarray]:
        """Every output as float, in the reference model's output order and layout (the manifest's ``outputs`` say
        where each is among the file's own outputs, how it is quantized and transposed; a file with one output has
        none)."""
        raw = self.session.outputs(self.prepare(x_nchw))
        described = self.artifact.get("outputs") or [
            {"index": i, "quant": self.artifact["output_quant"] if i == 0 else None} for i in range(len(raw))]
        outputs = [dequantize(raw[o["index"]], o["quant"]) for o in described]
        # a converter's NHWC output back in the reference's NCHW
        return [y.transpose(o["transpose"]) if o.get("transpose") else y for y, o in zip(outputs, described)]

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.session.run(self.prepare(x_nchw)))

    def predict_each(self, inputs_nchw: np.ndarray) -> np.ndarray:
        """Logits of every sample, one at a time (the artifacts have a static batch of 1)."""
        return np.stack([self.predict(sample[None])[0] for sample in inputs_nchw]).astype(np.float32)


def load_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def find_artifact(manifest: dict, kind: str) -> dict:
    for artifact in manifest["artifacts"]:
        if artifact["kind"] == kind:
            return artifact
    valid = ", ".join(a["kind"] for a in manifest["artifacts"])
    raise SystemExit(f"error: no artifact '{kind}' in the manifest; valid: {valid}")


def verify(manifest: dict, base: Path) -> list[str]:
    """The files whose sha256 does not match the manifest (missing files included)."""
    bad = []
    for name, digest in manifest.get("files", {}).items():
        path = base / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad
