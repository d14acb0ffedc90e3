"""``pipeline report --compare RUN...``: several boards or runs in one table, one row per board x artifact.

A RUN is a run directory (every ``<target>/report.json`` in it), a target directory, or a
``report.json`` file. Measured and estimated figures stay in separate tables.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..artifacts import write_json, write_text
from ..errors import ConfigError
from .report import ESTIMATE_NOTE, png_bytes, pyplot, spread_text

COMPARE_SCHEMA = "embedded-pipeline/comparison/1"


def find_reports(runs: list[str | Path]) -> list[Path]:
    found = []
    for run in map(Path, runs):
        if run.is_file() and run.suffix == ".json":
            found.append(run)
        elif (run / "report.json").is_file():
            found.append(run / "report.json")
        elif run.is_dir() and sorted(run.glob("*/report.json")):
            found.extend(sorted(run.glob("*/report.json")))
        else:
            raise ConfigError(f"{run}: no report.json there (expected a run directory, a target directory or a "
                              "report.json; run 'pipeline run' or 'pipeline report' first)")
    return found


def _where(report: dict) -> str:
    measured = report["measured_on"]
    system = measured["system"]
    machine = f"{system.get('board') or system.get('cpu') or system['machine']} ({system['machine']})"
    return f"ssh {measured['destination']}: {machine}" if measured["kind"] == "ssh" else f"local host: {machine}"


def _model(report: dict) -> str:
    """Which model a report measured: runs for several boards may hold different students of one teacher."""
    model = report["model"]
    return f"{'student of ' if model.get('teacher') else ''}{model['source']}, {model['flops'] / 1e6:.1f} MFLOPs"


def comparison(report_paths: list[Path]) -> dict:
    measured, estimated = [], []
    for path in report_paths:
        try:
            report = json.loads(path.read_text())
            board, where, model = report["target"]["name"], _where(report), _model(report)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a pipeline report ({exc.__class__.__name__}: {exc})") from exc
        for r in report["rows"]:
            measured.append({
                "board": board, "model": model, "measured_on": where, "artifact": r["kind"], "runtime": r["runtime"],
                "top1": r.get("top1"), "drop": r["drop"], "latency_ms": r["latency_ms"], "spread": r["spread"],
                "noisy": r["noisy"], "peak_rss_mb": r["peak_rss_mb"], "size_bytes": r["size_bytes"],
                "threads": r["threads"], "report": str(path),
            })
        estimated += [{"board": board, "model": model, **e, "report": str(path)} for e in report.get("estimates", [])]
    return {"schema": COMPARE_SCHEMA, "reports": [str(p) for p in report_paths], "measured": measured,
            "estimated": estimated}


def _tables(data: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    header = ["board", "model", "measured on", "artifact", "runtime", "threads", "top-1 (%)", "drop (pts)", "p50 (ms)",
              "p90 (ms)", "p99 (ms)", "spread", "peak RSS (MiB)", "size (KiB)"]
    body = [[r["board"], r["model"], r["measured_on"], r["artifact"], r["runtime"], str(r["threads"]), f"{r['top1']:.2f}",
             f"{r['drop']:+.2f}", f"{r['latency_ms']['p50']:.3f}", f"{r['latency_ms']['p90']:.3f}",
             f"{r['latency_ms']['p99']:.3f}", spread_text(r), f"{r['peak_rss_mb']:.0f}",
             f"{r['size_bytes'] / 1024:.1f}"] for r in data["measured"]]
    tables = [("Measured", header, body)]
    if data["estimated"]:
        est_header = ["board", "model", "artifact", "estimated latency (ms)", "bound", "peak (GOPS)", "bandwidth (GB/s)"]
        est_body = [[e["board"], e["model"], e["kind"], f"{e['latency_ms']:.4f}", e["bound"], f"{e['peak_gops']:g}",
                     f"{e['bandwidth_gbs']:g}"] for e in data["estimated"]]
        tables.append(("Estimated (roofline, not measured)", est_header, est_body))
    return tables


def _latency_plot(data: dict) -> bytes:
    plt = pyplot()
    rows = data["measured"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
    labels = [f"{r['board']} · {r['measured_on'].split(':')[0]} · {r['artifact']}" for r in rows]
    ax.barh(labels, [r["latency_ms"]["p50"] for r in rows], color="#4a7ab5",
            xerr=[[r["latency_ms"]["p50"] - r["latency_ms"]["min"] for r in rows],
                  [r["latency_ms"]["p90"] - r["latency_ms"]["p50"] for r in rows]])
    ax.set_xlabel("median latency (ms); whiskers: min to p90")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def write_comparison(runs: list[str | Path], directory: Path) -> list[Path]:
    """Merge the reports found in ``runs`` into compare.md / compare.html / compare.json in ``directory``."""
    data = comparison(find_reports(runs))
    directory.mkdir(parents=True, exist_ok=True)
    tables = _tables(data)
    png = _latency_plot(data) if data["measured"] else b""
    md = ["# Comparison", "", f"Reports: {', '.join(data['reports'])}", ""]
    for title, header, body in tables:
        md += [f"## {title}", ""] + ([ESTIMATE_NOTE, ""] if title.startswith("Estimated") else [])
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in body] + [""]
    if png:
        (directory / "compare_latency.png").write_bytes(png)
        md += ["![latency per board and artifact](compare_latency.png)", ""]
    cells = lambda items, tag: "".join(f"<{tag}>{html.escape(i)}</{tag}>" for i in items)  # noqa: E731
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>"
        + (f"<p>{html.escape(ESTIMATE_NOTE)}</p>" if title.startswith("Estimated") else "")
        + f"<table><tr>{cells(header, 'th')}</tr>" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body) + "</table>"
        for title, header, body in tables
    )
    image = f'<img alt="latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:nth-child(-n+5),th:nth-child(-n+5){{text-align:left}}</style>
</head><body><h1>Comparison</h1><p>Reports: {html.escape(', '.join(data['reports']))}</p>{sections}{image}</body></html>
"""
    write_json(directory / "compare.json", data)
    write_text(directory / "compare.md", "\n".join(md))
    write_text(directory / "compare.html", page)
    return [directory / "compare.md", directory / "compare.html", directory / "compare.json"]
