"""Compatibility: every deployable artifact of a target checked against the board's own toolchain before anything is
copied to the board; ``compatibility.md`` and ``.json`` in ``out/<target>/compat/``, and the board scripts the bundle
carries (``setup.sh`` for the runtimes, the toolchain's own: ``compile_edgetpu.sh``, ``build_engines.sh``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import sha256_file, sha256_json
from ..compat import TOOLCHAINS, toolchain_of
from ..engine import Step
from ..formats import FORMATS

COMPAT_DIR = Path(__file__).resolve().parents[1] / "compat"


def bundled_name(artifact) -> str:
    """Where the bundle puts an artifact."""
    return f"artifacts/{artifact.kind}{Path(artifact.path).suffix}"


def checker(target, artifact):
    """The target's toolchain where it takes this artifact, else the CPU runtimes (an Edge TPU board's float TFLite)."""
    row = toolchain_of(target)
    return row if artifact.format in row.formats and row.kinds(artifact.kind) else TOOLCHAINS["cpu"]


OP_HEADER = ["#", "op", "layer", "runs on", "why not", "what to change"]


def op_rows(result: dict) -> list[list[str]]:
    """Every op of one artifact's compatibility: index, op, layer, where it runs (the toolchain's device, CPU or
    refused), why not on the device and what to change."""
    place = lambda op: result["device"] if op["runs_on"] == "accelerator" else op["runs_on"]  # noqa: E731
    return [[str(o["index"]), o["op"], o["layer"][:60], place(o), o["why"], o["change"]] for o in result["ops"]]


def compat_markdown(target, results: list[dict]) -> str:
    lines = [f"# {target.name}: compatibility with the board's toolchains", ""]
    for result in results:
        lines += [f"## {result['kind']} — {result['toolchain']}", "", f"**{result['verdict']}**", ""]
        lines += [f"- {p}" for p in result["problems"]] + ([""] if result["problems"] else [])
        lines += ["| " + " | ".join(OP_HEADER) + " |", "|" + "---|" * len(OP_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in op_rows(result)] + [""]
    return "\n".join(lines)


def compat_sections(results: list[dict]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Report sections (title, note, header, rows): per artifact that the board's accelerator toolchain checks, or
    that has ops off its device, every op and where it runs."""
    sections = []
    for r in results:
        if r["device"].startswith("CPU") and all(o["runs_on"] == "accelerator" for o in r["ops"]):
            continue  # ONNX Runtime on the CPU, or LiteRT with every op in XNNPACK: the verdict line says it all
        sections.append((f"Compatibility: {r['kind']} with the {r['toolchain']}",
                         " ".join([r["verdict"] + ".", *r["problems"]]), OP_HEADER, op_rows(r)))
    return sections


def setup_script(target) -> str:
    """Installs one of the profile's runtimes on the board: its own install commands, the first by default."""
    cases = "".join(f"  {name}) {command} ;;\n" for name, command in target.install.items())
    return f"""#!/bin/sh
# Install a runtime for this bundle on {target.description}: the commands of target profile {target.name}.
# Usage: sh setup.sh [{'|'.join(target.install)}]   (default: {target.runtimes[0]})
set -eu
case "${{1:-{target.runtimes[0]}}}" in
{cases}  *) echo "unknown runtime: choose one of {' '.join(target.install)}" >&2; exit 2 ;;
esac
"""


def board_scripts(target, artifacts) -> dict[str, str]:
    """File name -> shell script, for the bundle: the runtimes' setup and the toolchain's own scripts."""
    paths = {a.kind: bundled_name(a) for a in artifacts if FORMATS[a.kind].deployable}
    return {"setup.sh": setup_script(target), **toolchain_of(target).scripts(paths, target.toolchain)}


def compat_step(plan, target, built: list) -> dict:
    """The compatibility of every deployable artifact of ``target``; its record's data has each one's verdict."""
    target_dir = plan.out / target.name
    artifacts = [(a, r) for a, r in built if FORMATS[a.kind].deployable]

    def produce(tmp: Path) -> dict:
        results = [checker(target, a).check(target_dir / a.path, a.kind, target).to_json() for a, _ in artifacts]
        (tmp / "compatibility.json").write_text(json.dumps({"target": target.name, "artifacts": results}, indent=2))
        (tmp / "compatibility.md").write_text(compat_markdown(target, results))
        return {"files": {"json": "compatibility.json", "md": "compatibility.md"},
                "verdicts": {r["kind"]: r["verdict"] for r in results}}

    rules = sha256_json({p.name: sha256_file(p) for p in sorted(COMPAT_DIR.glob("*.py"))})  # changed rules: recheck
    params = {"toolchain": target.toolchain.__dict__, "io": target.int8.io_dtype.value, "rules": rules}
    return plan.run(Step(f"{target.name}/compat", "evaluate", params, [r for _, r in artifacts],
                         target_dir / "compat", produce))


def compat_results(plan, record: dict) -> list[dict]:
    return json.loads(plan.path(record, "json").read_text())["artifacts"]

