"""An Ultralytics checkpoint (``--model best.pt``, as ``yolo train`` saves it) as the model: exported to ONNX once by
the ``ultralytics`` package itself (the optional extra ``pip install 'embedded-pipeline[ultralytics]'``), then read as
any Ultralytics ONNX file (its class names, input size and task from the metadata the exporter writes).

A checkpoint pickles Ultralytics' own classes (``ultralytics.nn.tasks.DetectionModel``), so nothing but that package
can load it; without it the run stops with a one-line error saying how to export the file by hand. The export runs
in a child process, offline (``YOLO_OFFLINE``: it would otherwise try to pip-install what it misses) and with its
settings kept in the run directory, at the configured image size or else the size the checkpoint was trained at,
and at the lowest ONNX opset of the targets. Its file is kept under ``out/shared/ultralytics/``, named after the
checkpoint's contents, so a second run reuses it.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..artifacts import sha256_file
from ..errors import ModelError

# What the child process runs: the checkpoint's export, printing the file it wrote.
EXPORT = """
import sys
from ultralytics import YOLO
size = [int(d) for d in sys.argv[2].split(",")] if sys.argv[2] else None
kwargs = {"imgsz": size} if size else {}
print(YOLO(sys.argv[1]).export(format="onnx", opset=int(sys.argv[3]), simplify=False, dynamic=False, **kwargs))
"""


def is_ultralytics_checkpoint(path: Path) -> bool:
    """A torch zip file whose pickle names Ultralytics' classes."""
    if path.suffix not in (".pt", ".pth") or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        return any(b"ultralytics.nn" in archive.read(n) for n in pickles)


def _has_ultralytics() -> bool:
    import importlib.util

    return importlib.util.find_spec("ultralytics") is not None


def exported_onnx(checkpoint: Path, out: Path, image_size: tuple[int, int] | None, opset: int,
                  log=print) -> Path:
    """The ONNX export of ``checkpoint``, made once per contents, size and opset."""
    size = f"{image_size[0]}x{image_size[1]}" if image_size else "trained-size"
    folder = out / "shared" / "ultralytics"
    onnx_path = folder / f"{checkpoint.stem}-{sha256_file(checkpoint)[:12]}-{size}-opset{opset}.onnx"
    if onnx_path.is_file():
        return onnx_path
    if not _has_ultralytics():
        raise ModelError(f"{checkpoint}: an Ultralytics checkpoint, which only the ultralytics package can read: pip "
                         f"install 'embedded-pipeline[ultralytics]', or export it yourself (yolo export "
                         f"model={checkpoint} format=onnx opset={opset}) and give the .onnx file")
    log(f"[run ] ultralytics export: {checkpoint} -> {onnx_path}")
    work = folder / f".{onnx_path.stem}.partial"
    work.mkdir(parents=True, exist_ok=True)
    copy = work / checkpoint.name  # the exporter writes beside the file it reads: not into the user's folder
    shutil.copyfile(checkpoint, copy)
    env = {**os.environ, "YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false", "YOLO_CONFIG_DIR": str(work / "settings")}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(copy), ",".join(map(str, image_size or ())), str(opset)],
                          capture_output=True, text=True, env=env, cwd=work)
    written = Path(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
    if written is None or not written.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{checkpoint}: the ultralytics export failed: {last}")
    os.replace(written, onnx_path)
    shutil.rmtree(work)
    return onnx_path


def with_exported_checkpoint(config, out: Path, opset: int, log=print):
    """``config`` with an Ultralytics checkpoint given as ``model`` replaced by its ONNX export; else as it is."""
    checkpoint = Path(config.model)
    if not checkpoint.is_file() or not is_ultralytics_checkpoint(checkpoint):
        return config
    return dataclasses.replace(config, model=str(exported_onnx(checkpoint, out, config.image_size, opset, log)))
