"""The budget a report judges a model against: the profile's for a built-in network, else only what the user set
(FLOPs, parameters, a latency per image), each beside the figure it bounds."""
from __future__ import annotations

from ..formats import FORMATS


def latency_text(max_ms: float, rows: list[dict], location: dict, board_estimates: list[dict]) -> str:
    """A latency budget against the fastest deployable artifact, decoding included where there is one: measured on the
    board when the run reached it over SSH; else measured here, beside the board's roofline lower bound, whose excess
    alone says OVER."""
    text = f"latency at most {max_ms:g} ms per image ({1000 / max_ms:.3g} fps)"
    timed = [(r.get("latency_with_postprocess_ms", r["latency_ms"])["p50"], r["kind"]) for r in rows
             if FORMATS[r["kind"]].deployable]
    if not timed:
        return f"{text}: nothing deployable was timed"
    p50, kind = min(timed)
    with_decoding = " with decoding" if any("latency_with_postprocess_ms" in r for r in rows) else ""
    if location.get("kind") == "ssh":
        return f"{text}: {kind} {p50:.2f} ms p50{with_decoding} on the board ({'within' if p50 <= max_ms else 'OVER'})"
    text += f": {kind} {p50:.2f} ms p50{with_decoding} on this host, not the board"
    if not board_estimates:
        return text
    bound = min(board_estimates, key=lambda e: e["latency_ms"])
    verdict = "OVER even so" if bound["latency_ms"] > max_ms else "not measured there"
    return f"{text}; the board's roofline lower bound {bound['latency_ms']:.2f} ms ({bound['kind']}; {verdict})"


def budget_text(plan, target, data: dict, rows: list[dict], location: dict, board_estimates: list[dict]) -> str:
    """The budget the model is judged against: the profile's for a built-in network, else the user's (the profiles'
    are sized for the built-in networks); a latency budget against the artifacts' timings."""
    if plan.source.row.profile_budgets:
        max_flops, max_params, max_size = target.budgets.max_flops, target.budgets.max_params, \
            target.budgets.max_model_size_mb
    else:
        teacher = data.get("teacher") or data
        (max_flops, max_params), max_size = plan.budget.limits(teacher["flops"], teacher["params"]), None
    parts = []
    if max_flops:
        parts.append(f"FLOPs {data['flops'] / 1e6:.1f}M of {max_flops / 1e6:.0f}M "
                     f"({'within' if data['flops'] <= max_flops else 'OVER'})")
    if max_params:
        parts.append(f"parameters {data['params'] / 1e3:.0f}k of {max_params / 1e3:.0f}k "
                     f"({'within' if data['params'] <= max_params else 'OVER'})")
    if max_size:
        parts.append(f"model size at most {max_size:g} MiB per artifact")
    if plan.budget.max_latency_ms:
        parts.append(latency_text(plan.budget.max_latency_ms, rows, location, board_estimates))
    if parts or plan.source.row.profile_budgets:
        return "; ".join(parts) or "none"
    return ("none set for this model (the board's profile budgets the built-in networks; --max-flops, --max-params, "
            "--max-latency-ms set one)")
