"""The ``pipeline`` command: a thin layer over the Python API (``pipeline.run``, ``pipeline.load_target``).

Only the commands that build or measure import the engine (and through it torch and TensorFlow): ``--help`` and
``pipeline targets`` stay light.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from board_runtime.detection import DECODERS

from .allocator import jemalloc_environment
from .compress.options import LATENCY_SOURCES
from .config import STAGES, build_config
from .errors import ConfigError, PipelineError
from .targets import list_targets, load_target

# `pipeline bench --model FILE` benchmarks such a file as it is (and evaluates it with --data), and runs nothing else.
MODEL_FILES_BENCHED_ALONE = (".tflite", ".onnx")

# What each stage command runs: the model step belongs to export, calibration to quantize.
STAGE_COMMANDS = {
    "compress": ("model", "compress"),
    "export": ("model", "export"),
    "quantize": ("quantize",),
    "convert": ("convert",),
    "evaluate": ("evaluate",),
    "bench": ("bench",),
    "report": ("report",),
    "bundle": ("bundle",),
}


def _run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="YAML file of options; flags override it")
    add("--target", dest="targets", help="board name(s), comma-separated, or a path to a profile YAML")
    add("--model", help="built-in name, package.module:factory, a TorchScript (.pt) / torch.export (.pt2) / ONNX (.onnx) "
                        "file, or a compressed student's .json")
    add("--weights", help="state_dict checkpoint for a built-in or factory model")
    add("--task", choices=["classify", "detect"],
        help="what the model's outputs mean (default: what the model file says (Ultralytics' metadata), else the "
             "built-in model's own, else classify)")
    add("--decoder", help=f"a detector's decoder: {', '.join(DECODERS)} or package.module:function (its options go in "
                          "the configuration's detect: section; default: what the model file says)")
    add("--image-size", help="H,W: the size detection images are letterboxed to (default: the model's input)")
    add("--data", help="directory of IDX files, image-folder tree, or .npz with x/y (default: Fashion-MNIST)")
    add("--out", help="run directory (default: out)")
    add("--input-shape", help="the model file's input N,C,H,W (e.g. 1,3,224,224) where its dims are dynamic "
                              "and no --data gives them")
    add("--tflite-pseudo-ops", help="ONNX ops that onnx2tf writes as builtin approximations (its -rtpo), e.g. Erf,GeLU: "
                                    "for a TFLite that would otherwise need the Flex delegate")
    add("--labels", help="the model's class names in output order: a text file (one per line) or JSON; the data's "
                         "classes (folder names, or indices) are mapped onto them")
    add("--preprocess", choices=["imagenet", "inception", "unit", "raw", "dataset"],
        help="the model's input normalisation: a preset (dataset: the training images' statistics)")
    add("--mean", help="per-channel mean on pixels in [0, 1], e.g. 0.485,0.456,0.406 (with --std)")
    add("--std", help="per-channel std on pixels in [0, 1], e.g. 0.229,0.224,0.225 (with --mean)")
    add("--channel-order", choices=["RGB", "BGR"], help="the model's input channel order (default: its own, else RGB)")
    add("--resize", type=int, help="resize images' shorter side to this before the crop (e.g. 256)")
    add("--crop", type=int, help="centre crop of this size after resizing (e.g. 224)")
    add("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resampling for --resize")
    add("--epochs", type=int, help="teacher training epochs when no weights are given")
    add("--train-subset", type=int, help="train the teacher on a random subset of this many samples")
    add("--device", help="where teacher training, block-wise distillation and fine-tuning run: auto (the default: the "
                         "first CUDA device where there is one), cpu, cuda or cuda:N")
    add("--precision", choices=["auto", "fp32", "bf16", "fp16"],
        help="training precision: auto (the default) is mixed precision where the device has it (bf16 on GPUs and on "
             "CPUs with bf16 instructions, fp16 on older GPUs)")
    add("--calibration-method", choices=["auto", "minmax", "percentile", "entropy", "mse"],
        help="activation ranges of the ONNX int8 model; auto (the default) keeps the method whose int8 model is "
             "closest to the float one on held-out calibration samples")
    add("--calibration-samples", type=int, help="representative training samples for int8 calibration")
    add("--weight-rounding", choices=["nearest", "gptq", "tuned"],
        help="int8 weights: chosen layer by layer from the calibration samples (gptq), then trained through the int8 "
             "model's rounding to match the float model's outputs (tuned, the default); or rounded to nearest")
    add("--tuning-steps", type=int, help="optimizer steps of the int8 weights' tuning (default 80)")
    add("--eval-samples", type=int, help="evaluate on a random subset of the held-out split")
    add("--bench-runs", type=int, help="timed inferences per artifact")
    add("--compress", action="store_true", default=None,
        help="compress the model by block-wise distillation before export (the default; budget: the targets' profiles)")
    add("--no-compress", action="store_true", default=None, help="export the model as it is, without compression")
    add("--max-flops", help="student FLOPs budget, e.g. 20M (a multiply-add counts as 2 FLOPs)")
    add("--max-params", help="student parameter budget, e.g. 300k")
    add("--flops-ratio", type=float, help="student FLOPs budget as a fraction of the teacher's")
    add("--params-ratio", type=float, help="student parameter budget as a fraction of the teacher's")
    add("--max-latency-ms", type=float,
        help="student latency budget per image, weighed with every candidate block timed with the first target's "
             "ONNX runtime and thread count (a table cached per board; see --latency-from)")
    add("--latency-from", choices=LATENCY_SOURCES,
        help="where the latency table comes from: timed on this host (the default), on the board of --host over SSH, "
             "or estimated from the target profile's roofline")
    add("--pick", type=int, help="use point N of the compression Pareto front instead of the budget's best")
    add("--host", help="benchmark on this board over SSH (user@board) with the bundle instead of on this machine; "
                       "'local' goes back to this machine")
    add("--ssh-port", type=int, help="the board's SSH port")
    add("--ssh-identity", help="private key file for SSH")
    add("--ssh-known-hosts", help="known_hosts file for the board (a new host key is accepted and recorded there)")
    add("--remote-python", help="the board's Python interpreter (default: python3)")
    add("--install", action="store_true", default=None,
        help="with --host: first install the runtimes the bundle needs on the board with the profile's install "
             "commands (pass the Python they install into with --remote-python)")
    add("--bench-repeats", type=int, help="fresh-process repeats per artifact (the report gives their median)")
    add("--force", action="store_true", default=None, help="re-run every stage even if its inputs are unchanged")
    add("--from", dest="from_stage", choices=STAGES, help="re-run from this stage on")


def _config(args: argparse.Namespace, stage_command: bool):
    config_file = args.config
    if config_file is None and stage_command:
        previous = Path(args.out or "out") / "pipeline.yaml"
        config_file = previous if previous.is_file() else None  # a stage continues the run it belongs to
    overrides = {
        "targets": args.targets, "model": args.model, "weights": args.weights, "data": args.data, "out": args.out,
        "task": args.task, "detect": {"decoder": args.decoder} if args.decoder else None,
        "image_size": _image_size(args.image_size),
        "labels": args.labels, "input_shape": args.input_shape, "artifact_only": _benched_alone(args) or None,
        "tflite_pseudo_ops": args.tflite_pseudo_ops,
        "eval_samples": args.eval_samples, "force": args.force, "from_stage": args.from_stage,
        "train": {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None},
        "calibration": {k: v for k, v in (("method", args.calibration_method), ("num_samples", args.calibration_samples),
                                          ("weight_rounding", args.weight_rounding),
                                          ("tuning_steps", args.tuning_steps)) if v is not None},
        "bench": {k: v for k, v in (("runs", args.bench_runs), ("repeats", args.bench_repeats), ("host", args.host),
                                    ("ssh_port", args.ssh_port), ("ssh_identity", args.ssh_identity),
                                    ("ssh_known_hosts", args.ssh_known_hosts), ("remote_python", args.remote_python),
                                    ("install", args.install))
                  if v is not None},
        "compress": _compress_overrides(args),
        "compute": {k: getattr(args, k) for k in ("device", "precision") if getattr(args, k) is not None},
        "preprocess": {k: getattr(args, k) for k in ("mean", "std", "channel_order", "resize", "crop", "interpolation")
                       if getattr(args, k) is not None} | ({"preset": args.preprocess} if args.preprocess else {}),
    }
    if args.host == "local":
        overrides["bench"]["host"] = None
    if stage_command:  # a stage command never inherits --force/--from from the saved configuration
        overrides["force"] = bool(args.force)
        overrides["from_stage"] = args.from_stage
    return build_config(config_file, **overrides)


def _image_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"--image-size: bad value {value!r}, expected H,W such as 320,320") from None
    return height, width


def _benched_alone(args: argparse.Namespace) -> bool:
    return args.command == "bench" and bool(args.model) and Path(args.model).suffix in MODEL_FILES_BENCHED_ALONE


def _compress_overrides(args: argparse.Namespace) -> dict:
    budget = {k: getattr(args, k) for k in ("max_flops", "max_params", "flops_ratio", "params_ratio", "max_latency_ms")
              if getattr(args, k) is not None}
    overrides = {"budget": budget} if budget else {}
    for name in ("pick", "latency_from"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.compress and args.no_compress:
        raise ConfigError("--compress and --no-compress: choose one")
    if args.compress or args.command == "compress":
        overrides["enabled"] = True
    elif args.no_compress or _benched_alone(args):
        overrides["enabled"] = False
    return overrides


def _print_result(results: dict[str, Path]) -> None:
    if not results:
        print("done")
    for target, directory in results.items():
        report = directory / "report.md"
        print(f"{target}: {report if report.is_file() else directory}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline", description="Trained PyTorch CNN -> benchmarked artifacts per board")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_options(sub.add_parser("run", help="all stages for one or more targets"))
    for name in STAGE_COMMANDS:
        stage = sub.add_parser(name, help=f"the {name} stage alone, on the run directory's earlier output" + (
            "; with --model FILE (.tflite or .onnx): that file as it is, benchmarked (and evaluated with --data)"
            if name == "bench" else ""))
        _run_options(stage)
        if name == "report":
            stage.add_argument("--compare", nargs="+", metavar="RUN",
                               help="merge the reports of these run or target directories (or report.json files) "
                                    "into one table, written to --out (default: comparison)")
    targets = sub.add_parser("targets", help="list or show target profiles").add_subparsers(dest="action", required=True)
    targets.add_parser("list", help="the available target profiles")
    show = targets.add_parser("show", help="one profile, validated")
    show.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "targets":
            if args.action == "list":
                for name in list_targets():
                    print(f"{name:18s} {load_target(name).description}")
            else:
                print(yaml.safe_dump(load_target(args.name).to_dict(), sort_keys=False), end="")
            return 0
        from .orchestrator import Run
        from .stages.compare import write_comparison

        if args.command == "report" and args.compare:
            for path in write_comparison(args.compare, Path(args.out or "comparison")):
                print(path)
        elif args.command == "run":
            _print_result(Run(_config(args, False)).execute())
        elif _benched_alone(args):  # the file as it is, every stage to the report, and nothing else
            _print_result(Run(_config(args, False)).execute())
        else:
            _print_result(Run(_config(args, True)).execute(STAGE_COMMANDS[args.command]))
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages and training epochs are kept; run the same command again to resume",
              file=sys.stderr)
        return 130


def entry() -> int:
    """The ``pipeline`` command: ``main`` in a process running on jemalloc where the system has it (``allocator``)."""
    environment = jemalloc_environment(dict(os.environ))
    if environment is not None:  # once: the new process finds jemalloc preloaded
        os.execve(sys.executable, [sys.executable, "-m", "pipeline", *sys.argv[1:]], environment)
    return main()


if __name__ == "__main__":
    sys.exit(entry())
