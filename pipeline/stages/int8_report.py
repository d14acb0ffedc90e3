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
