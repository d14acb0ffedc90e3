"""The compress step's own report: compression.md (teacher vs student, the chosen blocks, the search, the latency
table's prediction against the measurement) and the Pareto front's plot."""
from __future__ import annotations

from .report import FLOP_NOTE, png_bytes, pyplot


def compression_markdown(report: dict) -> str:
    """Teacher vs student, the chosen block per position, the Pareto front and the time per phase."""
    t, s = report["teacher"], report["student"]
    metric = report.get("metric", "top1")
    name = METRIC_NAMES.get(metric, metric)
    lines = [
        "# Compression", "", FLOP_NOTE, "",
        f"Budget: FLOPs <= {report['budget']['max_flops'] or 'any'}, parameters <= {report['budget']['max_params'] or 'any'}"
        + (f", latency <= {report['budget']['max_latency_ms']} ms" if report["budget"].get("max_latency_ms") else ""),
        "", f"| model | FLOPs | parameters | test {name} (%) | val {name} (%) |", "|---|---|---|---|---|",
        f"| teacher | {t['flops']:,} | {t['params']:,} | {_figure(t, f'test_{metric}')} | {t[f'val_{metric}']:.2f} |",
        f"| student | {s['flops']:,} ({s['flops'] / t['flops']:.2f}x) | {s['params']:,} ({s['params'] / t['params']:.2f}x) "
        f"| {_figure(s, f'test_{metric}')} | {s[f'val_{metric}']:.2f} |",
        "", "Test: the held-out split, which neither model trained on. Val: held out of the training split for scoring "
        "and early stopping; a teacher trained on that split (the built-in ones are) has seen them, so its val figure is "
        "optimistic.",
        "", "| block | chosen | distillation error | FLOPs | parameters | candidates |", "|---|---|---|---|---|---|",
    ]
    for b in report["blocks"]:
        chosen = ", ".join(f"{k}={v}" for k, v in b["chosen"].items())
        lines.append(f"| {b['block']} | {chosen} | {b['score']:.4f} | {b['flops']:,} | {b['params']:,} | {b['candidates']} |")
    lines += ["", "Pareto front (pick one with `--pick N`):", "", "| N | FLOPs | parameters | summed error |",
              "|---|---|---|---|"]
    lines += [f"| {i} | {p['flops']:,} | {p['params']:,} | {p['score']:.4f} |" for i, p in enumerate(report["pareto_front"])]
    lines += ["", f"![Pareto front: summed block error vs FLOPs]({PARETO_PLOT})", ""]
    lines += _search_lines(report.get("search"), report.get("latency"), report.get("compute"))
    lines += ["Time per phase (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)


def _search_lines(search: dict | None, latency: dict | None, compute: dict | None) -> list[str]:
    """How many candidates were trained and for how long; the latency budget's prediction against the measurement."""
    lines = []
    if search:
        pruned = "; ".join(f"{n} {reason}" for reason, n in search["pruned"].items()) or "none"
        lines.append(f"Search: {search['candidates']} candidates; left out before training (no choice under the budget "
                     f"can use them): {pruned}.")
        for rung in search["halving"]:
            lines.append(f"Successive halving after step {rung['after_step']}: {rung['kept']} of {rung['ranked']} "
                         "candidates went on (least regret under the budget).")
        lines += [f"Candidate-batches trained: {search['candidate_batches']:,} "
                  f"(every candidate to the end: {search['candidate_batches_without_halving']:,}).", ""]
    if latency:
        error = latency["measured_ms"] / latency["predicted_ms"] - 1 if latency["predicted_ms"] else float("nan")
        lines += [f"Latency ({latency['source']}): predicted {latency['predicted_ms']:.3f} ms (the sum of the chosen "
                  f"blocks' and the head's), measured {latency['measured_ms']:.3f} ms for the whole student "
                  f"({error:+.1%}).", ""]
        fitted = latency.get("calibration", [])
        if fitted:
            errors = ", ".join(f"{m['measured_ms'] / m['predicted_ms'] - 1:+.1%}" for m in fitted if m["predicted_ms"])
            lines += [f"Each block's time alone less {latency['per_block_call_ms']:.4f} ms (what a block timed alone "
                      f"costs beyond its share of a model), fitted on the teacher and {len(fitted) - 1} students under "
                      f"the budget, measured whole; their measured against predicted: {errors}.", ""]
    if compute:
        lines += [f"Trained on {compute['device']} in {compute['precision']} ({compute.get('allocator', 'n/a')}).", ""]
    return lines


METRIC_NAMES = {"top1": "top-1", "map50_95": "mAP50-95"}  # the report's metric keys, as the tables name them


def _figure(model: dict, key: str) -> str:
    return f"{model[key]:.2f}" if key in model else "n/a"


PARETO_PLOT = "pareto_front.png"


def pareto_plot(report: dict) -> bytes:
    """The Pareto front (summed block error vs FLOPs, numbered as ``--pick`` takes them), the chosen point and the
    FLOPs budget, as a PNG."""
    plt = pyplot()
    front, student = report["pareto_front"], report["student"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["flops"] / 1e6 for p in front], [p["score"] for p in front], "o-", color="#4a7ab5", label="Pareto front")
    for i, p in enumerate(front):
        ax.annotate(str(i), (p["flops"] / 1e6, p["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([student["predicted_flops"] / 1e6], [sum(b["score"] for b in report["blocks"])], s=140,
               facecolors="none", edgecolors="#c0392b", linewidths=2, label="chosen student", zorder=3)
    if report["budget"]["max_flops"]:
        ax.axvline(report["budget"]["max_flops"] / 1e6, color="#888", linestyle="--", label="FLOPs budget")
    ax.set_xlabel("MFLOPs (multiply-add = 2)")
    ax.set_ylabel("summed block distillation error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
