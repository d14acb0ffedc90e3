"""What a model's outputs mean, one row per task (``config.Task``): what an artifact's evaluation holds when there is
none, the figure its accuracy is read by, the report's accuracy columns, whether int8 models keep what follows the
network's last layer in float, and how many calibration images are too few. The stages ask the run's row
(``Planner.task_row``) instead of testing the task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from board_runtime.registry import Registry

from .errors import ConfigError

Columns = tuple[list[str], list[list[str]]]


def shown(value, form: str) -> str:
    return "—" if value is None else format(value, form)  # — : not evaluated


@dataclass(frozen=True)
class TaskRow:
    name: str  # a ``config.Task`` value
    not_evaluated: dict  # an artifact's evaluation fields without data
    accuracy: Callable[[dict], float | None]  # the figure an artifact's accuracy is read by
    metric: Callable[[dict], str]  # its name
    columns: Callable[[list[dict]], Columns]  # the report's accuracy columns, header and cells
    # the int8 kinds keep the ops after the network's last layer (a detector's decoding) in float, where the board
    # runs float ops beside int8 ones: at the outputs' full range int8 would round boxes and scores alike
    float_tail: bool = False
    few_calibration_images: int = 0  # fewer are warned about (0: never)


def _classifier_columns(rows: list[dict]) -> Columns:
    return (["top-1 (%)", "drop (pts)", "agreement (%)", "max logit diff"],
            [[shown(r["top1"], ".2f"), shown(r["drop"], "+.2f"), shown(r["agreement"], ".2f"),
              shown(r["max_logit_diff"], ".4f")] for r in rows])


def _detector_columns(rows: list[dict]) -> Columns:
    return (["mAP50-95 (%)", "mAP50 (%)", "drop (pts)", "mAP50-95 vs ref (%)", "mAP50 vs ref (%)",
             "ref boxes found (%)", "their IoU"],
            [[shown(r["map50_95"], ".2f"), shown(r["map50"], ".2f"), shown(r["drop"], "+.2f"),
              shown(r["reference_map50_95"], ".2f"), shown(r["reference_map50"], ".2f"), shown(r["recall"], ".1f"),
              shown(r["mean_iou"], ".3f")] for r in rows])


TASKS: Registry[TaskRow] = Registry("task", ConfigError)
TASKS.register("classify", TaskRow(
    "classify", {"samples": None, "top1": None, "agreement": None, "max_logit_diff": None, "drop": None},
    accuracy=lambda row: row["top1"], metric=lambda row: "top-1", columns=_classifier_columns))
TASKS.register("detect", TaskRow(
    "detect", {"samples": None, "map50_95": None, "map50": None, "reference_map50_95": None, "reference_map50": None,
               "recall": None, "mean_iou": None, "sqnr_db": None, "drop": None, "detections": None},
    # against the labels, else (a folder of photos) against the reference's own boxes
    accuracy=lambda row: row["map50_95"] if row.get("map50_95") is not None else row.get("reference_map50"),
    metric=lambda row: "mAP50-95" if row.get("map50_95") is not None else "mAP50 vs the reference",
    columns=_detector_columns, float_tail=True,
    # below it a detector's int8 ranges are a guess (Ultralytics' int8 exports ask for ~300+)
    few_calibration_images=300))
