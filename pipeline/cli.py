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

from .allocator import jemalloc_environment
from .cli_options import add_options, not_applying, overrides
from .config import build_config
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


def _config(args: argparse.Namespace, stage_command: bool):
    config_file = args.config
    if config_file is None and stage_command:
        previous = Path(args.out or "out") / "pipeline.yaml"
        config_file = previous if previous.is_file() else None  # a stage continues the run it belongs to
    given = overrides(args, args.command)
    if args.command == "compress":
        if getattr(args, "compress", None) is False:
            raise ConfigError("pipeline compress --no-compress: nothing to do (pipeline export exports the model as "
                              "it is)")
        given.setdefault("compress", {})["enabled"] = True
    elif _benched_alone(args):
        given.setdefault("compress", {})["enabled"] = False
        given["artifact_only"] = True
    if stage_command:  # a stage command never inherits --force/--from from the saved configuration
        given["force"] = bool(args.force)
        given["from_stage"] = getattr(args, "from")
    return build_config(config_file, **given)


def _benched_alone(args: argparse.Namespace) -> bool:
    return args.command == "bench" and bool(args.model) and Path(args.model).suffix in MODEL_FILES_BENCHED_ALONE


def _print_result(results: dict[str, Path]) -> None:
    if not results:
        print("done")
    for target, directory in results.items():
        report = directory / "report.md"
        print(f"{target}: {report if report.is_file() else directory}")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``error: pipeline convert: unrecognized arguments: --epochs``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _targets_list(args: argparse.Namespace) -> None:
    for name in list_targets():
        print(f"{name:18s} {load_target(name).description}")


def _targets_show(args: argparse.Namespace) -> None:
    print(yaml.safe_dump(load_target(args.name).to_dict(), sort_keys=False), end="")


def _run(args: argparse.Namespace) -> None:
    from .orchestrator import Run

    _print_result(Run(_config(args, False)).execute())


def _stage(args: argparse.Namespace) -> None:
    from .orchestrator import Run
    from .stages.compare import write_comparison

    if args.command == "report" and args.compare:
        for path in write_comparison(args.compare, Path(args.out or "comparison")):
            print(path)
    elif _benched_alone(args):  # the file as it is, every stage to the report, and nothing else
        _print_result(Run(_config(args, False)).execute())
    else:
        _print_result(Run(_config(args, True)).execute(STAGE_COMMANDS[args.command]))


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="pipeline", description="Trained PyTorch CNN -> benchmarked artifacts per board")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_options(sub.add_parser("run", help="all stages for one or more targets"), "run")
    sub.choices["run"].set_defaults(func=_run)
    for name in STAGE_COMMANDS:
        stage = sub.add_parser(name, help=f"the {name} stage alone, on the run directory's earlier output" + (
            "; with --model FILE (.tflite or .onnx): that file as it is, benchmarked (and evaluated with --data)"
            if name == "bench" else ""))
        add_options(stage, name)
        stage.set_defaults(func=_stage)
        if name == "report":
            stage.add_argument("--compare", nargs="+", metavar="RUN",
                               help="merge the reports of these run or target directories (or report.json files) "
                                    "into one table, written to --out (default: comparison)")
    targets = sub.add_parser("targets", help="list or show target profiles").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    targets.add_parser("list", help="the available target profiles").set_defaults(func=_targets_list)
    show = targets.add_parser("show", help="one profile, validated")
    show.add_argument("name")
    show.set_defaults(func=_targets_show)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra:
        command = f"{args.command} {args.action}" if args.command == "targets" else args.command
        top.error(not_applying(extra[0], command) or f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
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
