"""A pipeline run: the model (or its student), then per target its artifacts, evaluation, bundle, bench, report.

Steps that targets have in common (model, export, calibration, int8/fp16 quantization, TFLite conversion) live
in ``out/shared/`` and run once; the per-target steps write ``out/<target>/``. The engine (``engine``) decides
which steps run; the planner (``planner``) builds each target's artifacts from the format registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from .config import STAGES, RunConfig, save_config
from .engine import Engine
from .errors import AccuracyError
from .planner import Planner
from .profile import TargetProfile
from .sources.ultralytics_checkpoint import with_exported_checkpoint
from .targets import load_target


class Run:
    """One pipeline run over a run directory: ``Run(config).execute()``."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] = print):
        self.out = Path(config.out)
        self.targets: list[TargetProfile] = [load_target(t) for t in config.targets]
        self.log = log
        # an Ultralytics checkpoint goes on as its ONNX export, at the opset every target parses
        self.config = with_exported_checkpoint(config, self.out, min(t.onnx_opset for t in self.targets), log)

    def execute(self, stages: Iterable[str] | None = None) -> dict[str, Path]:
        """Run ``stages`` (all by default) for every target; returns each target's directory."""
        from .stages import bench, bundle, evaluate, report
        from .stages.compat import compat_step
        from .stages.model import compress_skip, compress_step, model_step

        engine = Engine(self.out, stages or STAGES, self.config.force, self.config.from_stage, self.log)
        plan = Planner(self.config, engine, self.targets)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "pipeline.yaml")
        plan.model_record = model_step(plan)
        if self.config.compress.enabled and engine.wants("compress"):
            reason = compress_skip(plan)
            if reason:
                self.log(f"[skip] compress: {reason}")
            else:
                plan.model_record = compress_step(plan)
        results: dict[str, Path] = {}
        if not engine.wants("export"):
            return results
        missed = []  # targets whose artifacts miss the accuracy gate: reported and bundled, then the run fails
        for target in self.targets:
            built = plan.artifacts(target)
            if not engine.wants("evaluate"):
                continue
            bundle.write_target_manifest(plan, target, [artifact for artifact, _ in built])
            results[target.name] = self.out / target.name
            compat = compat_step(plan, target, built)
            evaluation = evaluate.evaluate_step(plan, target, built)
            if not evaluation["gate"]["passed"] and "evaluate" in engine.requested:
                missed.append(evaluate.gate_message(evaluation["gate"], target.name))
            bundled = bundle.bundle_step(plan, target, built, evaluation, compat) if engine.wants("bundle") and (
                "bundle" in engine.requested or self.config.bench.host) else None
            if not engine.wants("bench"):
                continue
            benched = bench.bench_step(plan, target, built, bundled)
            if engine.wants("report"):
                report.report_step(plan, target, built, evaluation, benched, compat)
        if missed:
            raise AccuracyError("; ".join(missed) + (f" (reports: {', '.join(str(d / 'report.md') for d in results.values())})"
                                                     if engine.wants("report") else ""))
        return results


def run(config: RunConfig | None = None, stages: Iterable[str] | None = None, **options: Any) -> dict[str, Path]:
    """Run the pipeline: ``run(targets="raspberry-pi-4")`` or ``run(build_config("pipeline.yaml"))``."""
    from .config import build_config

    return Run(config or build_config(**options)).execute(stages)
