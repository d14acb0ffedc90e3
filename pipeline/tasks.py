"""What a model's outputs mean, one row per task (``config.Task``): how its artifacts are evaluated and gated, what an
evaluation holds when there is none, the figure its accuracy is read by, the report's accuracy columns, how the int8
fallback judges agreement with the float model, whether int8 models keep what follows the network's last layer in
float, and how many calibration images are too few. The stages ask the run's row (``Planner.task_row``) instead of
testing the task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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
    # (target profile, the data has labels) -> (the points an artifact may lose, the evaluation key they are of)
    gate: Callable[[Any, bool], tuple[float, str]]
    # the points of agreement with the float model the int8 fallback lets an int8 model lose on calibration samples
    fallback_tolerance: Callable[[Any], float]
    # (planner, input (H, W)) -> how the int8 fallback scores that agreement (``calibration.fallback.Judge``)
    judge: Callable[[Any, tuple[int, int]], Any]
    # (planner, artifacts, target directory, batches, samples, threads, step's tmp folder, test split) -> the
    # evaluate step's record data: "evaluations" (dicts) and "files" it wrote
    evaluate: Callable[..., dict]
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


PICTURE = "detections.png"  # a few held-out images with every artifact's boxes


def _top1_judge(plan, input_hw):
    from calibration.fallback import TOP1

    return TOP1


def _reference_map50_judge(plan, input_hw):
    from .detection.metrics import reference_map50_judge

    return reference_map50_judge(plan.decoder, input_hw)


def _evaluate_classifier(plan, artifacts, target_dir, batches, total, threads, tmp, test) -> dict:
    from dataclasses import asdict

    from .stages.evaluate import evaluate_artifacts

    return {"evaluations": [asdict(e) for e in evaluate_artifacts(artifacts, target_dir, batches, total, threads)]}


def _evaluate_detector(plan, artifacts, target_dir, batches, total, threads, tmp, test) -> dict:
    from dataclasses import asdict

    from .detection.evaluate import evaluate_detectors
    from .detection.picture import write_picture

    data = plan.model_record["data"]
    rows, found = evaluate_detectors(artifacts, target_dir, batches, total, threads, plan.decoder, plan.data.labelled,
                                     len(data["classes"]), data["output_names"])
    write_picture(tmp / PICTURE, test, found, plan.decoder["display_threshold"], data["classes"])
    return {"evaluations": [asdict(r) for r in rows], "files": {"picture": PICTURE}}


TASKS: Registry[TaskRow] = Registry("task", ConfigError)
TASKS.register("classify", TaskRow(
    "classify", {"samples": None, "top1": None, "agreement": None, "max_logit_diff": None, "drop": None},
    accuracy=lambda row: row["top1"], metric=lambda row: "top-1", columns=_classifier_columns,
    gate=lambda target, labelled: (target.accuracy_tolerance, "top1"),
    fallback_tolerance=lambda target: target.accuracy_tolerance, judge=_top1_judge, evaluate=_evaluate_classifier))
TASKS.register("detect", TaskRow(
    "detect", {"samples": None, "map50_95": None, "map50": None, "reference_map50_95": None, "reference_map50": None,
               "recall": None, "mean_iou": None, "sqnr_db": None, "drop": None, "detections": None},
    # against the labels, else (a folder of photos) against the reference's own boxes
    accuracy=lambda row: row["map50_95"] if row.get("map50_95") is not None else row.get("reference_map50"),
    metric=lambda row: "mAP50-95" if row.get("map50_95") is not None else "mAP50 vs the reference",
    columns=_detector_columns,
    # points of mAP50-95 against the labels, or without labels of mAP50 against the reference's own boxes
    gate=lambda target, labelled: (target.detection_tolerance.map50_95, "map50_95") if labelled else (
        target.detection_tolerance.reference_map50, "reference_map50"),
    fallback_tolerance=lambda target: target.detection_tolerance.reference_map50, judge=_reference_map50_judge,
    evaluate=_evaluate_detector, float_tail=True,
    # below it a detector's int8 ranges are a guess (Ultralytics' int8 exports ask for ~300+)
    few_calibration_images=300))
