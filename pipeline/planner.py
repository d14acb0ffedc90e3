"""The planner: targets x formats -> steps, each built once per run whatever the number of targets that need it.

A format row's builder asks the planner for what it needs (another kind, the calibration samples or ranges)
and hands it a step; the planner gives each step id one record per run, and refuses two different steps
under one id, so that a step's id is its only identity (in memory and on disk).
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Callable

from .artifacts import Artifact, sha256_file
from .config import RunConfig, Task
from .errors import ConfigError
from .data import DataSplits, PreprocessSpec, load_dataset
from .data.labels import map_classes, read_labels
from .data.preprocess import PreprocessOptions, recipe_of
from .engine import Engine, Step
from .formats import FORMATS, get_format
from .profile import TargetProfile


class Planner:
    """What the steps of one run share: the configuration, the data, the model's record and the steps built."""

    def __init__(self, config: RunConfig, engine: Engine, targets: list[TargetProfile]):
        self.config, self.engine, self.out, self.targets = config, engine, engine.out, targets
        self.model_record: dict | None = None  # the model (or compress) step's record, set by the run
        self._built: dict[str, tuple[str, dict]] = {}  # step id -> (inputs hash, record)

    # ---- what steps read ------------------------------------------------------------------------
    @cached_property
    def card(self):
        """What the model file says about itself (``sources.model_card.ModelCard``; ``NO_CARD``, all None, where
        nothing)."""
        from .sources.model_card import NO_CARD

        return self.source.row.card(self.source) or NO_CARD

    @cached_property
    def carried_preprocessing(self):
        """The preprocessing the model carries (and where from), or None; the user's options take precedence."""
        own = self.source.row.preprocessing(self.source)
        if own is None and self.card.preprocess is not None:
            return self.card.preprocess, self.card.origin
        return own

    @cached_property
    def task(self) -> Task:
        """The configuration's task, else the model file's card's, else the built-in model's, else classify."""
        from .nets import BUILTINS

        builtin = BUILTINS.get(self.config.model)
        return self.config.task or Task(self.card.task or (builtin.task if builtin else Task.CLASSIFY))

    @cached_property
    def task_row(self):
        """The row of the run's task (``tasks.TASKS``): what the stages ask instead of testing the task."""
        from .tasks import TASKS

        return TASKS.find(self.task.value)

    @cached_property
    def decoder(self) -> dict | None:
        """A detector's decoder options (``board_runtime.detection``): the configuration's, the model file's card's or
        the built-in model's; None for a classifier."""
        if self.task is not Task.DETECT:
            return None
        from board_runtime.detection import check_options

        from .nets import BUILTINS

        builtin = BUILTINS.get(self.config.model)
        decoder = self.config.detect or self.card.decoder or (builtin.decoder if builtin else None)
        if decoder is None:
            raise ConfigError(f"{self.config.model}: a detector needs its decoder: give 'detect: {{decoder: NAME, ...}}'"
                              " in the configuration or --decoder NAME")
        return check_options(decoder)

    @cached_property
    def budget(self):
        """The budget the model is compressed to and judged against: the user's; for a built-in network its unset
        limits filled with the strictest of the targets' profiles (sized for the built-in networks, not for a user's
        model)."""
        budget = self.config.compress.budget
        if not self.source.row.profile_budgets:
            return budget
        flops = [t.budgets.max_flops for t in self.targets if t.budgets.max_flops]
        params = [t.budgets.max_params for t in self.targets if t.budgets.max_params]
        return budget.with_defaults(min(flops, default=None), min(params, default=None))

    @cached_property
    def data(self) -> DataSplits | None:
        """The data; None for a model file benchmarked alone without ``--data`` (no Fashion-MNIST default then)."""
        if self.config.artifact_only and self.config.data is None:
            return None
        if self.task is Task.DETECT:
            from .data.detection import load_detection

            return load_detection(self.config.data, self.config.image_size or (
                tuple(self.config.input_shape[2:]) if self.config.input_shape else None) or self.card.image_hw
                or self.source.row.input_hw(self.source))
        own = self.carried_preprocessing[0] if self.carried_preprocessing else PreprocessOptions()
        recipe = recipe_of(self.config.preprocess, own)
        data = load_dataset(self.config.data, self.config.image_size, recipe["resize"], recipe["crop"],
                            recipe["interpolation"])
        if self.config.labels:
            data = map_classes(data, read_labels(self.config.labels), self.config.labels)
        return data

    @cached_property
    def source(self):
        from .sources import ModelSource

        return ModelSource(self.config.model, self.config.weights)

    @cached_property
    def compute(self):
        """The device and precision of the training loops (imports torch: only steps that train ask)."""
        from .compute import resolve

        return resolve(self.config.compute)

    def path(self, record: dict, key: str) -> Path:
        return self.engine.path(record, key)

    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.model_record["data"]["preprocess"])

    def load_torch(self):
        """The model as a module: rebuilt from its source with the weights the model or compress step wrote."""
        from .sources import ModelSource, build_model
        from .sources.student import load_student_files

        record = self.model_record
        if "student_spec" in record["files"]:
            return load_student_files(self.path(record, "student_spec"), self.path(record, "student_weights"))
        weights = record["files"].get("weights")
        source = ModelSource(self.config.model, str(self.out / weights) if weights else None)
        return build_model(source, record["data"]["input_shape"][1], len(record["data"]["classes"]))

    # ---- steps ----------------------------------------------------------------------------------
    def run(self, step: Step) -> dict:
        """The step's record, run (or skipped) once per run; a second, different step under its id is a bug."""
        if step.id in self._built:
            inputs_hash, record = self._built[step.id]
            if inputs_hash != step.inputs_hash:
                raise RuntimeError(f"two different steps share the id '{step.id}': the step id must name "
                                   "every input that changes its outputs")
            return record
        record = self.engine.run(step)
        self._built[step.id] = (step.inputs_hash, record)
        return record

    def shared_step(self, name: str, stage: str, params: dict, needs: list[dict], produce: Callable[..., dict],
                    **options) -> dict:
        """A step made from the run's model: the teacher's live in ``out/shared/``, a student's in
        ``out/shared/<student>/``, so that runs with another budget in the same directory keep (and skip to)
        each other's outputs instead of replacing them."""
        variant = self.model_record["step"].rpartition("/")[0]
        step_id = f"{variant}/{name}" if variant else name
        return self.run(Step(step_id, stage, params, needs, self.out / "shared" / step_id, produce, **options))

    def build(self, kind: str, target: TargetProfile) -> tuple[dict, str]:
        """The record of the step that writes ``kind`` for ``target``, and the file's key in it."""
        return get_format(kind).build(self, target)

    def calibration_samples(self) -> dict:
        from .stages.calibrate import samples_step

        return samples_step(self)

    def int8_model(self, target: TargetProfile) -> tuple[dict, str]:
        """The float model the int8 kinds quantize: the export itself, or with its weights chosen on the target's
        int8 grid (``calibration.weight_rounding``)."""
        from calibration import WeightRounding
        from .stages.calibrate import tuning_step

        model, key = self._rounded_model(target)
        if self.config.calibration.weight_rounding is not WeightRounding.TUNED:
            return model, key
        export, export_key = self.build("onnx-fp32", target)
        return tuning_step(self, export, export_key, model, self.calibration_ranges(target), target.int8), "onnx"

    def _rounded_model(self, target: TargetProfile) -> tuple[dict, str]:
        """The export, or with its weights chosen layer by layer: the model the activation ranges are computed on."""
        from calibration import WeightRounding
        from .stages.calibrate import weights_step

        export, key = self.build("onnx-fp32", target)
        if self.config.calibration.weight_rounding is WeightRounding.NEAREST:
            return export, key
        return weights_step(self, export, key, target.int8.granularity), "onnx"

    @staticmethod
    def variant(model: dict) -> str:
        """The step-name part of a model record with chosen int8 weights ("-gptq-per-channel"); "" for the export."""
        return f"-{model['data']['variant']}" if "variant" in model["data"] else ""

    @staticmethod
    def untrained_from(model: dict) -> int:
        """The first calibration sample the weights of ``model`` (``int8_model``) were not trained on: the tuning's
        held-out quarter, where its weights were kept; 0 otherwise. Whatever judges the int8 model on calibration
        samples (the fallback) starts there: the tuned model fits the others better than it fits unseen data."""
        tuning = model["data"].get("tuning", {})
        return model["data"]["num_samples"] - tuning["held_out"] if tuning.get("kept") else 0

    def weights_note(self, model: dict, found: list, layout: str) -> tuple[str, tuple[int, int]]:
        """How an int8 kind made from ``model`` (``int8_model``) got its weights, checked against its ``found`` int8
        tensors; and (layers kept exactly, layers chosen)."""
        from .stages.calibrate import weights_note

        return weights_note(self, model, found, layout)

    def calibration_ranges(self, target: TargetProfile) -> dict:
        """The activation ranges the int8 kinds quantize with, computed before any tuning: a tuned model was trained
        through these ranges' rounding, so it keeps them."""
        from .stages.calibrate import ranges_step

        return ranges_step(self, self._rounded_model(target)[0], target.int8)

    # ---- a target's artifacts -------------------------------------------------------------------
    def kinds(self, target: TargetProfile) -> list[str]:
        """The reference first, then the target's kinds in the registry's order, up to the requested stages; the
        reference alone for a model file used as it is."""
        reference = self.model_record["data"].get("reference_kind", self.source.row.reference_kind)
        derived = [] if self.config.artifact_only or not self.source.row.derives else [
            k for k in FORMATS if k in target.artifacts and k != reference]
        wanted = [reference, *derived]
        return [k for k in wanted if self.engine.wants(FORMATS[k].stage)]

    def artifacts(self, target: TargetProfile) -> list[tuple[Artifact, dict]]:
        """Every artifact of ``target`` (paths relative to ``out/<target>/``) with the record of its step."""
        target_dir = self.out / target.name
        shape = tuple(self.model_record["data"]["input_shape"])
        found = []
        for kind in self.kinds(target):
            row = FORMATS[kind]
            record, key = row.build(self, target)
            path = self.path(record, key)
            found.append((Artifact(
                kind=kind, format=row.format, precision=row.precision, session=row.session,
                path=os.path.relpath(path, target_dir), sha256=sha256_file(path), size_bytes=path.stat().st_size,
                calibration=record["data"].get("calibration", {}).get(key), **row.io(record, key, target, shape),
            ), record))
        return found
