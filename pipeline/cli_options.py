"""The ``pipeline`` command's options, one row each: its flag, the configuration field it sets, its type or the enum
and registry its values come from, its help, and the group it belongs to. A group is what a command takes: each
stage command shows and accepts only the groups of its own stages, ``run`` takes them all. The argparse parsers,
their ``choices=``, the mapping onto the configuration and the CLI reference in ``docs/cli.md`` are made from this
table alone.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from board_runtime.detection import DECODERS
from calibration import CalibrationMethod, WeightRounding

from .compress.options import LATENCY_SOURCES
from .config import PRECISIONS, STAGES, Task
from .data.preprocess import DATASET, PRESETS, ChannelOrder

# The groups, in the order help shows them, and what each holds.
GROUPS = {
    "run directory": "where the run lives and what it re-runs",
    "model": "the model, its data and its input",
    "training": "teacher training and where training runs",
    "compression": "block-wise distillation to a budget",
    "int8": "calibration and int8 weights",
    "conversion": "the TFLite conversion",
    "evaluation": "the evaluation of every artifact",
    "benchmark": "timing, here or on the board over SSH",
}

# What each command takes: its stages' groups (a stage command continues a run, so the model's options belong to the
# commands that make the model; `bench --model FILE` benchmarks a file as it is, so bench takes them too).
COMMAND_GROUPS = {
    "run": tuple(GROUPS),
    "compress": ("run directory", "model", "training", "compression"),
    "export": ("run directory", "model", "training"),
    "quantize": ("run directory", "int8"),
    "convert": ("run directory", "conversion"),
    "evaluate": ("run directory", "evaluation"),
    "bundle": ("run directory",),
    "bench": ("run directory", "model", "evaluation", "benchmark"),
    "report": ("run directory",),
}


def image_size(value: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value {value!r}, expected H,W such as 320,320") from None
    return height, width


@dataclass(frozen=True)
class Option:
    flag: str  # "--calibration-method"
    field: str | None  # the configuration field it sets, dotted ("calibration.method"); None: the command reads it
    group: str  # a key of GROUPS
    help: str
    type: Callable[[str], Any] | None = None  # int, float, image_size, ...
    choices: Any = None  # an Enum class, a registry or a sequence: the values it takes
    switch: bool = False  # a flag without a value (store_true; with ``negated``, both spellings)
    negated: str | None = None  # the flag that sets it False (--no-compress)
    unset: str | None = None  # the value that sets the field back to its default (--host local)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def values(self) -> list[str] | None:
        if self.choices is None:
            return None
        if isinstance(self.choices, type) and issubclass(self.choices, Enum):
            return [member.value for member in self.choices]
        return list(self.choices)


OPTIONS = (
    Option("--config", None, "run directory", "YAML file of options; flags override it", type=Path),
    Option("--out", "out", "run directory", "run directory (default: out)"),
    Option("--target", "targets", "run directory", "board name(s), comma-separated, or a path to a profile YAML"),
    Option("--force", "force", "run directory", "re-run every stage even if its inputs are unchanged", switch=True),
    Option("--from", "from_stage", "run directory", "re-run from this stage on", choices=STAGES),
    Option("--model", "model", "model", "built-in name, package.module:factory, a TorchScript (.pt) / torch.export "
           "(.pt2) / ONNX (.onnx) / TFLite (.tflite) file, an Ultralytics checkpoint (.pt), or a compressed student's "
           ".json"),
    Option("--weights", "weights", "model", "state_dict checkpoint for a built-in or factory model"),
    Option("--task", "task", "model", "what the model's outputs mean (default: what the model file says (Ultralytics' "
           "metadata), else the built-in model's own, else classify)", choices=Task),
    Option("--decoder", "detect.decoder", "model", f"a detector's decoder: {', '.join(DECODERS)} or "
           "package.module:function (its options go in the configuration's detect: section; default: what the model "
           "file says)"),
    Option("--image-size", "image_size", "model", "H,W: the size detection images are letterboxed to (default: the "
           "model's input)", type=image_size),
    Option("--data", "data", "model", "directory of IDX files, image-folder tree, COCO .json, YOLO layout, or .npz "
           "with x/y (default: Fashion-MNIST)"),
    Option("--input-shape", "input_shape", "model", "the model file's input N,C,H,W (e.g. 1,3,224,224) where its "
           "dims are dynamic and no --data gives them"),
    Option("--labels", "labels", "model", "the model's class names in output order: a text file (one per line) or "
           "JSON; the data's classes (folder names, or indices) are mapped onto them"),
    Option("--preprocess", "preprocess.preset", "model", "the model's input normalisation: a preset (dataset: the "
           "training images' statistics)", choices=(*PRESETS, DATASET)),
    Option("--mean", "preprocess.mean", "model", "per-channel mean on pixels in [0, 1], e.g. 0.485,0.456,0.406 "
           "(with --std)"),
    Option("--std", "preprocess.std", "model", "per-channel std on pixels in [0, 1], e.g. 0.229,0.224,0.225 (with "
           "--mean)"),
    Option("--channel-order", "preprocess.channel_order", "model", "the model's input channel order (default: its "
           "own, else RGB)", choices=ChannelOrder),
    Option("--resize", "preprocess.resize", "model", "resize images' shorter side to this before the crop (e.g. 256)",
           type=int),
    Option("--crop", "preprocess.crop", "model", "centre crop of this size after resizing (e.g. 224)", type=int),
    Option("--interpolation", "preprocess.interpolation", "model", "resampling for --resize",
           choices=("bilinear", "bicubic", "nearest")),
    Option("--epochs", "train.epochs", "training", "teacher training epochs when no weights are given", type=int),
    Option("--train-subset", "train.train_subset", "training", "train the teacher on a random subset of this many "
           "samples", type=int),
    Option("--device", "compute.device", "training", "where teacher training, block-wise distillation and "
           "fine-tuning run: auto (the default: the first CUDA device where there is one), cpu, cuda or cuda:N"),
    Option("--precision", "compute.precision", "training", "training precision: auto (the default) is mixed "
           "precision where the device has it (bf16 on GPUs and on CPUs with bf16 instructions, fp16 on older GPUs)",
           choices=PRECISIONS),
    Option("--compress", "compress.enabled", "model", "compress the model by block-wise distillation before export "
           "(the default for a built-in network; budget: the targets' profiles); --no-compress exports it as it is",
           switch=True, negated="--no-compress"),
    Option("--max-flops", "compress.budget.max_flops", "compression", "student FLOPs budget, e.g. 20M (a "
           "multiply-add counts as 2 FLOPs)"),
    Option("--max-params", "compress.budget.max_params", "compression", "student parameter budget, e.g. 300k"),
    Option("--flops-ratio", "compress.budget.flops_ratio", "compression", "student FLOPs budget as a fraction of the "
           "teacher's", type=float),
    Option("--params-ratio", "compress.budget.params_ratio", "compression", "student parameter budget as a fraction "
           "of the teacher's", type=float),
    Option("--max-latency-ms", "compress.budget.max_latency_ms", "compression", "latency budget per image: the "
           "student's, weighed with every candidate block timed with the first target's ONNX runtime (a table cached "
           "per board; see --latency-from); the report holds every model's fastest artifact against it", type=float),
    Option("--latency-from", "compress.latency_from", "compression", "where the latency table comes from: timed on "
           "this host (the default), on the board of --host over SSH, or estimated from the target profile's "
           "roofline", choices=LATENCY_SOURCES),
    Option("--pick", "compress.pick", "compression", "use point N of the compression Pareto front instead of the "
           "budget's best", type=int),
    Option("--calibration-method", "calibration.method", "int8", "activation ranges of the int8 models; auto (the "
           "default) keeps the method whose int8 model is closest to the float one on held-out calibration samples",
           choices=CalibrationMethod),
    Option("--calibration-samples", "calibration.num_samples", "int8", "representative training samples for int8 "
           "calibration", type=int),
    Option("--weight-rounding", "calibration.weight_rounding", "int8", "int8 weights: chosen layer by layer from the "
           "calibration samples (gptq), then trained through the int8 model's rounding to match the float model's "
           "outputs (tuned, the default); or rounded to nearest", choices=WeightRounding),
    Option("--tuning-steps", "calibration.tuning_steps", "int8", "optimizer steps of the int8 weights' tuning "
           "(default 80)", type=int),
    Option("--tflite-pseudo-ops", "tflite_pseudo_ops", "conversion", "ONNX ops that onnx2tf writes as builtin "
           "approximations (its -rtpo), e.g. Erf,GeLU: for a TFLite that would otherwise need the Flex delegate"),
    Option("--eval-samples", "eval_samples", "evaluation", "evaluate on a random subset of the held-out split",
           type=int),
    Option("--bench-runs", "bench.runs", "benchmark", "timed inferences per artifact", type=int),
    Option("--bench-repeats", "bench.repeats", "benchmark", "fresh-process repeats per artifact (the report gives "
           "their median)", type=int),
    Option("--host", "bench.host", "benchmark", "benchmark on this board over SSH (user@board) with the bundle "
           "instead of on this machine; 'local' goes back to this machine", unset="local"),
    Option("--ssh-port", "bench.ssh_port", "benchmark", "the board's SSH port", type=int),
    Option("--ssh-identity", "bench.ssh_identity", "benchmark", "private key file for SSH"),
    Option("--ssh-known-hosts", "bench.ssh_known_hosts", "benchmark", "known_hosts file for the board (a new host "
           "key is accepted and recorded there)"),
    Option("--remote-python", "bench.remote_python", "benchmark", "the board's Python interpreter (default: python3)"),
    Option("--install", "bench.install", "benchmark", "with --host: first install the runtimes the bundle needs on "
           "the board with the profile's install commands (pass the Python they install into with --remote-python)",
           switch=True),
)


def not_applying(flag: str, command: str) -> str | None:
    """Why ``flag`` is refused by ``command`` when another command takes it: the commands that do."""
    name = flag.split("=")[0]
    row = next((o for o in OPTIONS if name in (o.flag, o.negated)), None)
    if row is None:
        return None
    takers = [c for c, groups in COMMAND_GROUPS.items() if row.group in groups]
    return f"{name} does not apply to 'pipeline {command}' (it sets {row.field}; {', '.join(takers)} take it)"


def options_of(command: str) -> list[Option]:
    groups = COMMAND_GROUPS[command]
    return [o for o in OPTIONS if o.group in groups]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """``command``'s options, in their groups; every value defaults to None (not given)."""
    sections = {name: parser.add_argument_group(name, GROUPS[name]) for name in COMMAND_GROUPS[command]}
    for option in options_of(command):
        section = sections[option.group]
        if option.switch:
            section.add_argument(option.flag, dest=option.dest, action="store_true", default=None, help=option.help)
            if option.negated:
                section.add_argument(option.negated, dest=option.dest, action="store_false",
                                     help=f"the opposite of {option.flag}")
            continue
        section.add_argument(option.flag, dest=option.dest, type=option.type, choices=option.values(),
                             help=option.help)


def overrides(args: argparse.Namespace, command: str) -> dict:
    """The configuration fields the flags given set, nested as ``build_config`` takes them."""
    nested: dict = {}
    for option in options_of(command):
        value = getattr(args, option.dest, None)
        if option.field is None or value is None:
            continue
        *sections, name = option.field.split(".")
        level = nested
        for section in sections:
            level = level.setdefault(section, {})
        level[name] = None if value == option.unset else value  # within a section, None sets the default
    return nested


def reference() -> str:
    """The CLI reference (``docs/cli.md``), from the table."""
    lines = ["# `pipeline` command-line reference", "",
             "Generated from `pipeline/cli_options.py` (`python -m pipeline.cli_options > docs/cli.md`); flags "
             "override the `--config` file, field by field.", "", "| command | option groups |", "|---|---|"]
    lines += [f"| `{command}` | {', '.join(groups)} |" for command, groups in COMMAND_GROUPS.items()]
    for group, what in GROUPS.items():
        lines += ["", f"## {group}: {what}", "", "| flag | configuration field | values | what it does |",
                  "|---|---|---|---|"]
        for o in (o for o in OPTIONS if o.group == group):
            values = ", ".join(o.values() or []) or (getattr(o.type, "__name__", "") if o.type else "") or \
                ("switch" if o.switch else "text")
            flag = f"`{o.flag}`" + (f" / `{o.negated}`" if o.negated else "")
            lines.append(f"| {flag} | {f'`{o.field}`' if o.field else '—'} | {values} | {o.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
