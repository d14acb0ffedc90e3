"""The int8 sections of a target's report: the weights layer by layer and the activations tensor by tensor."""
from __future__ import annotations

WEIGHTS_TITLE = "Int8 weights, layer by layer"
WEIGHTS_NOTE = ("SQNR of each layer's output with only its own weights in int8, from the calibration samples' input "
                "statistics: rounded to nearest (what ONNX Runtime and the TFLite converter do) and as chosen (GPTQ "
                "rounding on the converters' grid, then bias correction). Lowest first.")
WEIGHTS_SHOWN = 12  # rows in the Markdown and HTML of each per-layer table; report.json has them all


def _weights_table(layers: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["layer", "op", "weight shape", "nearest (dB)", "chosen (dB)"]
    ranked = sorted(layers, key=lambda layer: layer["sqnr_nearest_db"])
    body = [[layer["layer"], layer["op"], "×".join(map(str, layer["shape"])), f"{layer['sqnr_nearest_db']:.1f}",
             f"{layer['sqnr_chosen_db']:.1f}"] for layer in ranked[:WEIGHTS_SHOWN]]
    return header, body


SENSITIVITY_TITLE = "Int8 activations, tensor by tensor ({kind})"
SENSITIVITY_NOTE = ("SQNR of each tensor the int8 model quantizes against the float model's, on {samples} calibration "
                    "samples: alone = this tensor's own int8 rounding and clipping (its scale and zero point), "
                    "accumulated = the int8 model's value, with every error upstream. The model's outputs first, then "
                    "the lowest accumulated.")


def _sensitivity_table(tensors: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["tensor", "written by", "alone (dB)", "accumulated (dB)"]
    ranked = sorted(tensors, key=lambda t: (t["producer"] != "output", t["accumulated_db"]))
    body = [[t["tensor"], t["producer"], "—" if t["producer"] == "output" else f"{t['alone_db']:.1f}",
             f"{t['accumulated_db']:.1f}"] for t in ranked[:WEIGHTS_SHOWN]]
    return header, body


SENSITIVITY_PLOTTED = 20  # tensors in each sensitivity plot, the lowest accumulated SQNR first


def sensitivity_figure(plt, kind: str, tensors: list[dict]):
    """A bar chart of the tensors with the lowest accumulated SQNR (the table's order, the model's outputs left out),
    each with its own rounding's SQNR beside it: a tensor low in both is where int8 costs most, one low only in
    accumulated inherits its error from upstream. None when no activation is quantized."""
    ranked = sorted((t for t in tensors if t["producer"] != "output"), key=lambda t: t["accumulated_db"])
    if not ranked:
        return None
    shown = ranked[:SENSITIVITY_PLOTTED]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1.6))
    positions = range(len(shown))
    ax.barh([p - 0.2 for p in positions], [t["accumulated_db"] for t in shown], height=0.4, color="#b5524a",
            label="accumulated")
    ax.barh([p + 0.2 for p in positions], [t["alone_db"] for t in shown], height=0.4, color="#4a7ab5",
            label="alone (its own rounding)")
    ax.set_yticks(list(positions), [t["tensor"] if len(t["tensor"]) <= 48 else "…" + t["tensor"][-47:] for t in shown],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR against the float model (dB)")
    fig.suptitle(f"{kind}: the {len(shown)} lowest of {len(ranked)} int8 activations", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return fig


def sensitivity_plot_name(kind: str) -> str:
    return f"int8_sensitivity_{kind}.png"


def int8_sections(layers: list[dict] | None, sensitivity: dict[str, dict] | None) -> list[tuple]:
    """(title, note, header, body) of each int8 table the run has data for."""
    sections = []
    if layers:
        more = len(layers) - WEIGHTS_SHOWN
        sections.append((WEIGHTS_TITLE, WEIGHTS_NOTE + (f" {more} more layers in report.json." if more > 0 else ""),
                         *_weights_table(layers)))
    for kind, errors in (sensitivity or {}).items():
        sections.append((SENSITIVITY_TITLE.format(kind=kind), SENSITIVITY_NOTE.format(samples=errors["samples"]),
                         *_sensitivity_table(errors["tensors"])))
    return sections
