"""Report: per-target Markdown, JSON and self-contained HTML (plots embedded), with a measured recommendation."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from ..data.preprocess import PreprocessSpec
from ..engine import Step
from ..formats import FORMATS
from ..tasks import TASKS, TaskRow
from .bench import board_evaluation_sections
from .budgets import budget_text
from .compat import compat_results, compat_sections
from .int8_report import int8_sections, sensitivity_figure, sensitivity_plot_name

# How the model's FLOPs were counted, by the framework of the run's model.
FLOP_COUNTERS = {"torch": "torch.utils.flop_counter", "onnx": "Conv, Gemm and MatMul nodes of the ONNX graph",
                 "tflite": "CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV ops of the TFLite file"}
FLOP_NOTE = f"FLOPs count a multiply-add as 2 operations ({FLOP_COUNTERS['torch']})."


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def merge_rows(evaluations: list[dict] | None, benches: list[dict], size_budget_mb: float | None,
               task: TaskRow) -> list[dict]:
    """One row per benchmarked artifact: its accuracy (None without data) next to its latency (a board's bundle has
    no PyTorch row)."""
    by_kind = {b["artifact"]: b for b in benches}
    rows = []
    for e in evaluations if evaluations is not None else [{"kind": b["artifact"], **task.not_evaluated}
                                                          for b in benches]:
        b = by_kind.get(e["kind"])
        if b is None:
            continue
        rows.append({
            **e, "label": FORMATS[e["kind"]].label,
            "runtime": f"{b['runtime']} {b['runtime_version']}" + "".join(f" + {a}" for a in b["accelerators"])
            + (" (QDQ unfused: this CPU's int8 kernels saturate)" if b.get("qdq_unfused") else ""),
            **{k: b[k] for k in ("size_bytes", "latency_ms", "load_ms", "first_inference_ms", "peak_rss_mb",
                                 "rss_growth_mb", "throughput_per_s", "threads", "runs", "repeats", "spread", "noisy")},
            **({"latency_with_postprocess_ms": b["latency_with_postprocess_ms"]}
               if "latency_with_postprocess_ms" in b else {}),
            "fits_size_budget": size_budget_mb is None or b["size_bytes"] / 2**20 <= size_budget_mb,
        })
    return rows


def recommend(rows: list[dict], tolerance: float, reference: str, task: TaskRow) -> dict | None:
    """The fastest deployable artifact (by median latency) within the accuracy tolerance and size budget."""
    evaluated = rows and rows[0]["drop"] is not None
    eligible = [r for r in rows if FORMATS[r["kind"]].deployable and (not evaluated or r["drop"] <= tolerance)
                and r["fits_size_budget"]]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: r["latency_ms"]["p50"])
    within = f"within {tolerance:g} points of {FORMATS[reference].label} and " if evaluated else "(not evaluated) within "
    return {"kind": best["kind"], "p50_ms": best["latency_ms"]["p50"], "accuracy": task.accuracy(best),
            "metric": task.metric(best), "drop": best["drop"],
            "reason": f"fastest median latency among the {len(eligible)} artifacts {within}the size budget"}


def _plots(rows: list[dict], sensitivity: dict[str, dict] | None, task: TaskRow) -> dict[str, bytes]:
    plt = pyplot()
    labels = [r["kind"] for r in rows]
    figures = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in (r for r in rows if task.accuracy(r) is not None):
        ax.scatter(r["latency_ms"]["p50"], task.accuracy(r), s=40)
        ax.annotate(r["kind"], (r["latency_ms"]["p50"], task.accuracy(r)), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel(f"{task.metric(rows[0])} (%)")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    if task.accuracy(rows[0]) is not None:
        figures["accuracy_vs_latency.png"] = fig
    else:
        plt.close(fig)
    for name, values, unit in (("size_per_artifact.png", [r["size_bytes"] / 1024 for r in rows], "size (KiB)"),
                               ("latency_per_artifact.png", [r["latency_ms"]["p50"] for r in rows], "median latency (ms)")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(labels, values, color="#4a7ab5")
        ax.set_xlabel(unit)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        figures[name] = fig
    for kind, errors in (sensitivity or {}).items():
        if (fig := sensitivity_figure(plt, kind, errors["tensors"])) is not None:
            figures[sensitivity_plot_name(kind)] = fig
    return {name: png_bytes(fig) for name, fig in figures.items()}


def spread_text(row: dict) -> str:
    """The repeats' spread, marked when it is over the noise threshold."""
    if row["spread"] is None:
        return "n/a (1 repeat)"
    return f"{row['spread']:.1%}" + (" NOISY" if row["noisy"] else "")


def _table(rows: list[dict], task: TaskRow) -> tuple[list[str], list[list[str]]]:
    accuracy_header, accuracy_cells = task.columns(rows)
    decoded = "latency_with_postprocess_ms" in rows[0]  # a detector's: with its decoding and NMS on the board
    header = ["artifact", "runtime", "size (KiB)", *accuracy_header, "p50 (ms)",
              *(["p50 + decoding, NMS (ms)"] if decoded else []), "p90 (ms)", "p99 (ms)", "mean ± std (ms)", "spread",
              "inferences/s", "load (ms)", "first (ms)", "peak RSS (MiB)", "RSS growth (MiB)"]
    body = []
    for r, accuracy in zip(rows, accuracy_cells):
        lat = r["latency_ms"]
        body.append([
            r["kind"], r["runtime"], f"{r['size_bytes'] / 1024:.1f}", *accuracy, f"{lat['p50']:.3f}",
            *([f"{r['latency_with_postprocess_ms']['p50']:.3f}"] if decoded else []), f"{lat['p90']:.3f}",
            f"{lat['p99']:.3f}", f"{lat['mean']:.3f} ± {lat['std']:.3f}", spread_text(r),
            f"{r['throughput_per_s']:.0f}", f"{r['load_ms']:.1f}", f"{r['first_inference_ms']:.2f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['rss_growth_mb']:.0f}",
        ])
    return header, body


ESTIMATE_TITLE = "Estimated on the board (roofline, not measured)"
ESTIMATE_NOTE = ("max(FLOPs / peak throughput, bytes moved / memory bandwidth) from the profile's published figures: "
                 "a lower bound that assumes peak throughput and no caching, not a measurement.")


def _estimate_table(estimates: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "precision", "estimated latency (ms)", "bound", "compute (ms)", "memory (ms)",
              "peak (GOPS)", "bandwidth (GB/s)"]
    body = [[e["kind"], e["precision"], f"{e['latency_ms']:.4f}", e["bound"], f"{e['compute_ms']:.4f}",
             f"{e['memory_ms']:.4f}", f"{e['peak_gops']:g}", f"{e['bandwidth_gbs']:g}"] for e in estimates]
    return header, body


def gate_summary(gate: dict) -> str:
    """Passed, or each failing artifact's drop and what to try."""
    if not gate.get("evaluated", True):
        return "not evaluated: no data given (--data)"
    if gate["passed"]:
        return f"passed: every artifact within {gate['tolerance']:g} points of {gate['reference']}"
    return "; ".join(f"{f['kind']} drops {f['drop']:.2f} points ({gate.get('metric', 'top-1')} {f['value']:.2f}%, "
                     f"tolerance {gate['tolerance']:g}): {f['advice']}" for f in gate["failing"])


def measured_on_text(measured: dict, threads: int, profile_threads: int, estimated: bool) -> str:
    system = measured["system"]
    machine = f"{system.get('board') or system.get('cpu') or system['machine']}, {system['machine']}, {system['cores']} cores"
    if measured["kind"] == "ssh" and system.get("emulated"):
        return (f"an EMULATED board, over SSH ({measured['destination']}) — {system['machine']} userland under "
                f"{system['emulated']}, {threads} threads: the latencies are the emulator's, not the board's")
    if measured["kind"] == "ssh":
        return f"the board, over SSH ({measured['destination']}) — {machine}, {threads} threads"
    return (f"this host — {machine}, {threads} threads (profile: {profile_threads}); not on the board itself"
            + (", see the estimates below" if estimated else ""))


def conditions_text(measured: dict) -> str:
    """Governor, temperatures before and after, throttling and load: what makes two runs disagree."""
    before, after = measured["system"], measured["system_after"]
    parts = [f"governor {before.get('governor', 'not exposed')}"]
    temps = lambda s: ", ".join(f"{k} {v:.0f} °C" for k, v in s.get("temperature_c", {}).items())  # noqa: E731
    parts.append(f"temperature {temps(before)} → {temps(after)}" if before.get("temperature_c")
                 else "temperature not exposed")
    if "throttled" in after:
        parts.append(f"throttled flags {after['throttled']}")
    if "load_average" in before:
        parts.append(f"load average {before['load_average'][0]:.2f} → {after.get('load_average', ['?'])[0]:.2f}")
    return "; ".join(parts)


def detection_sections(rows: list[dict]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """A detector's raw outputs, each artifact's against the reference's."""
    if not rows or not rows[0].get("sqnr_db"):  # a classifier's, or not evaluated
        return []
    names = list(rows[0]["sqnr_db"])
    return [("Raw outputs against the reference", "SQNR (dB) of each output tensor over the held-out images, before "
             "decoding; boxes and scores apart, as int8 quantizes them apart.",
             ["artifact", *[f"{n} SQNR (dB)" for n in names], "confident boxes per image"],
             [[r["kind"], *["identical" if r["sqnr_db"][n] is None else f"{r['sqnr_db'][n]:.1f}" for n in names],
               f"{r['detections']:.2f}"] for r in rows])]


def write_report(data: dict, directory: Path, pictures: dict[str, bytes] | None = None) -> list[str]:
    """Write report.md, report.json, report.html and the plots (and ``pictures``, PNG by name) into ``directory``;
    return the file names."""
    import json

    rows, target, reference = data["rows"], data["target"], data["reference"]["label"]
    task = TASKS.find(data["task"])
    pngs = {**(pictures or {}), **_plots(rows, data.get("int8_sensitivity"), task)}
    for name, png in pngs.items():
        (directory / name).write_bytes(png)
    (directory / "report.json").write_text(json.dumps(data, indent=2, default=str))
    header, body = _table(rows, task)
    rec = data["recommendation"]
    accuracy = lambda rec: "" if rec["accuracy"] is None else (  # noqa: E731
        f", {rec['metric']} {rec['accuracy']:.2f}% ({rec['drop']:+.2f} points vs {reference})")
    rec_text = (f"**{rec['kind']}** — {rec['p50_ms']:.3f} ms median{accuracy(rec)}; {rec['reason']}." if rec
                else "none: no artifact is within the accuracy tolerance and size budget.")
    model, bench = data["model"], data["bench"]
    gate_text = gate_summary(data["accuracy_gate"])
    facts = [
        ("Board", f"{target['description']} ({target['board']['cpu_arch']}, {target['board']['cores']} cores, "
                  f"{target['board']['memory_mb']} MiB, accelerator: {target['board']['accelerator']})"),
        ("Measured on", measured_on_text(data["measured_on"], rows[0]["threads"], data["profile_threads"],
                                         bool(data["estimates"]))),
        ("Conditions", conditions_text(data["measured_on"])),
        ("Model", f"{'student of ' if model.get('teacher') else ''}{model['source']} — {model['params']:,} parameters, {model['flops'] / 1e6:.1f} MFLOPs, "
                  f"input {model['input_shape']}"),
        *([("Compression", f"block-wise distilled student of {model['source']}: "
                            f"{model['flops'] / model['teacher']['flops']:.2f}x the teacher's FLOPs, "
                            f"{model['params'] / model['teacher']['params']:.2f}x its parameters "
                            f"(details: {model['compression_details']})")] if model.get("teacher") else []),
        ("Preprocessing", PreprocessSpec.from_dict(data["preprocess"]).describe() if data["preprocess"]
         else "none given (no data to preprocess)"),
        ("Budgets", data["budget_text"]),
        ("Evaluation", f"{rows[0]['samples']} held-out samples from {data['dataset']}; tolerance "
                       f"{data['accuracy_gate']['tolerance']:g} points of {data['accuracy_gate'].get('metric', 'top-1')} "
                       f"below {reference}" if rows[0]["samples"] is not None
         else "none: no data given (--data); latency and memory only"),
        ("Accuracy gate", gate_text if data["accuracy_gate"]["passed"] else f"FAILED: {gate_text}"),
        ("Compatibility", "; ".join(f"{r['kind']}: {r['verdict']}" for r in data["compatibility"])
         + " (what the board's toolchains will do with each file, predicted from it: compatibility.md)"),
        ("Calibration", "; ".join(f"{kind}: {text}" for kind, text in data["calibration"].items())
         or "none (no int8 artifact)"),
        *([("ONNX export parity", f"max |logit diff| vs the model as given {data['export_parity']:.2e}")]
          if data["export_parity"] is not None else []),
        ("Latency", f"median of {bench['repeats']} repeats, each a fresh process ({bench['warmup']} warm-up, then up "
                    f"to {bench['runs']} timed runs); spread = (max - min) / median of the repeats' medians, "
                    f"NOISY above {bench['noise_threshold']:.0%}"),
    ]
    md = [f"# {target['name']}: deployment report", ""]
    if not data["accuracy_gate"]["passed"]:
        md += [f"**FAILED the accuracy gate:** {gate_text}", ""]
    md += [f"- **{k}:** {v}" for k, v in facts]
    md += ["", f"**Recommended artifact:** {rec_text}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    sections = []  # (title, note, header, body) after the main table
    if data["estimates"]:
        sections.append((ESTIMATE_TITLE, f"{ESTIMATE_NOTE} Board figures: {data['estimates'][0]['source']}",
                         *_estimate_table(data["estimates"])))
    sections += detection_sections(rows)
    sections += int8_sections(data.get("int8_layers"), data.get("int8_sensitivity"))
    sections += compat_sections(data["compatibility"]) + board_evaluation_sections(data.get("board_evaluation"))
    for title, note, sec_header, sec_body in sections:
        md += ["", f"## {title}", "", note, "", "| " + " | ".join(sec_header) + " |", "|" + "---|" * len(sec_header)]
        md += ["| " + " | ".join(row) + " |" for row in sec_body]
    flop_note = f"FLOPs count a multiply-add as 2 operations ({data['flop_counter']})."
    md += ["", flop_note, ""]
    md += [f"![{name}]({name})" for name in pngs]
    md += ["", f"Tool versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}", ""]
    (directory / "report.md").write_text("\n".join(md))
    images = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(p).decode()}"></figure>'
        for n, p in pngs.items()
    )
    cells = lambda items, tag: "".join(f"<{tag}>{html.escape(i)}</{tag}>" for i in items)  # noqa: E731
    sections_html = "".join(
        f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p><table><tr>{cells(sec_header, 'th')}</tr>"
        + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in sec_body) + "</table>"
        for title, note, sec_header, sec_body in sections
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(target['name'])} report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>{html.escape(target['name'])}: deployment report</h1>
{'' if data['accuracy_gate']['passed'] else f'<p style="color:#b00"><b>FAILED the accuracy gate:</b> {html.escape(gate_text)}</p>'}
<ul>{''.join(f'<li><b>{html.escape(k)}:</b> {html.escape(str(v))}</li>' for k, v in facts)}</ul>
<p><b>Recommended artifact:</b> {html.escape(rec_text.replace('**', ''))}</p>
<table><tr>{cells(header, 'th')}</tr>{''.join(f'<tr>{cells(r, "td")}</tr>' for r in body)}</table>
{sections_html}
<p>{html.escape(flop_note)}</p>{images}</body></html>
"""
    (directory / "report.html").write_text(page)
    return ["report.md", "report.json", "report.html", *pngs]


def estimates(target, rows: list[dict], flops: int, onnx_path: Path) -> list[dict]:
    """Roofline figures for the board from its profile, for a run that could not measure on it."""
    from dataclasses import asdict

    from ..estimate import estimate_all

    if target.performance is None:
        return []
    kinds = [r["kind"] for r in rows if FORMATS[r["kind"]].deployable]
    return [{**asdict(e), "source": target.performance.source}
            for e in estimate_all(kinds, flops, onnx_path, target.performance)]


def report_step(plan, target, built: list, evaluation: dict, benched: dict, compat: dict) -> dict:
    """report.md, .html and .json in ``out/<target>/``: accuracy and latency per artifact, and where each came from."""
    options, data, target_dir = plan.config.bench, plan.model_record["data"], plan.out / target.name
    # The ONNX export (for its parity and the roofline estimates); a .tflite given as it is has none.
    export, onnx_key = plan.build("onnx-fp32", target) if plan.source.row.derives else (None, None)
    reference = built[0][0].kind
    # The int8 kinds' float model: its record has the per-layer weight table when their weights were chosen.
    int8_model = plan.int8_model(target)[0] if export and any(a.precision == "int8" for a, _ in built) else None

    def produce(tmp: Path) -> dict:
        from .bundle import tool_versions

        rows = merge_rows(evaluation["data"]["evaluations"], benched["data"]["results"],
                          target.budgets.max_model_size_mb if plan.source.row.profile_budgets else None, plan.task_row)
        details = plan.model_record["files"].get("report")
        board_estimates = estimates(target, rows, data["flops"], plan.path(export, onnx_key)) \
            if export and not options.host else []
        location = benched["data"]["location"]
        content = {
            "target": target.to_dict(), "rows": rows,
            "task": plan.task.value, "recommendation": recommend(rows, evaluation["gate"]["tolerance"], reference,
                                                                   plan.task_row),
            "reference": {"kind": reference, "label": FORMATS[reference].label},
            "model": {"source": plan.config.model, "params": data["params"], "flops": data["flops"],
                      "input_shape": data["input_shape"], "teacher": data.get("teacher"),
                      "compression_details": os.path.relpath((plan.out / details).with_suffix(".md"), target_dir)
                      if details else None},
            "budget_text": budget_text(plan, target, data, rows, location, board_estimates),
            "preprocess": data["preprocess"],
            "flop_counter": FLOP_COUNTERS[plan.source.row.framework],
            "dataset": data["dataset"], "export_parity": export["data"]["parity_max_abs"] if export else None,
            "calibration": {a.kind: a.calibration for a, _ in built if a.calibration},
            "measured_on": {**location, "system": benched["data"]["system"],
                            "system_after": benched["data"]["system_after"]},
            "profile_threads": target.threads,
            "bench": {k: getattr(options, k) for k in ("repeats", "runs", "warmup", "noise_threshold")},
            "versions": tool_versions(),
            "estimates": board_estimates,
            "accuracy_gate": evaluation["gate"],
            "compatibility": compat_results(plan, compat),
            "board_evaluation": benched["data"].get("board_evaluation"),
            "int8_layers": int8_model["data"].get("layers", []) if int8_model else [],
            "int8_sensitivity": {a.kind: r["data"]["sensitivity"] for a, r in built
                                 if a.precision == "int8" and "sensitivity" in r["data"]},
        }
        picture = evaluation["files"].get("picture")
        pictures = {"detections.png": plan.path(evaluation, "picture").read_bytes()} if picture else None
        return {"files": {n: n for n in write_report(content, tmp, pictures)}}

    # a changed profile or latency budget: a new report
    params = {"profile": target.to_dict(), "accuracy_gate": evaluation["gate"],
              "max_latency_ms": plan.budget.max_latency_ms}
    needs = [plan.model_record, *([export] if export else []), *([int8_model] if int8_model else []), evaluation,
             benched, compat]
    return plan.run(Step(f"{target.name}/report", "report", params, needs,
                         target_dir, produce, flatten=True))
