"""The runner of the pipeline: decides which steps run, skips the finished ones, and resumes.

A step is one stage applied to one set of inputs. Steps that targets have in common (model, export,
calibration, int8/fp16 quantization, TFLite conversion) live in ``out/shared/`` and run once; the
per-target steps (evaluate, bundle, bench, report) write ``out/<target>/``. Every step writes into a
temp directory that replaces its output whole, then records the hash of its inputs in
``out/.state/<step>.json``; a step whose record matches its inputs is skipped.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from calibration import CalibrationRanges, DataSplits, PreprocessSpec, calibrate, load_dataset

from .artifacts import (ARTIFACT_KINDS, REFERENCE_KIND, Artifact, QuantParams, atomic_dir, remove_partials,
                        sha256_file, sha256_json, write_json)
from .config import STAGES, RunConfig, save_config
from .errors import ModelError, StageOrderError
from .models import ModelSource, build_model, check_input, count_flops, count_params
from .targets import TargetProfile, format_count, load_target

PARITY_SAMPLES = 64
EXECUTION_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider"}


class Run:
    """One pipeline run over a run directory: ``Run(config).execute()``."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] = print):
        self.config = config
        self.out = Path(config.out)
        self.targets: list[TargetProfile] = [load_target(t) for t in config.targets]
        self.log = log
        self.requested: set[str] = set(STAGES)

    # ---- inputs shared by the steps -------------------------------------------------------
    @cached_property
    def data(self) -> DataSplits:
        return load_dataset(self.config.data, self.config.image_size)

    @cached_property
    def data_fingerprint(self) -> str:
        return self.data.fingerprint()

    @cached_property
    def source(self) -> ModelSource:
        return ModelSource(self.config.model, self.config.weights)

    def _source_identity(self) -> dict:
        identity = {"model": self.config.model, "kind": self.source.kind}
        for key, value in (("weights", self.config.weights), ("file", self.config.model)):
            if value and Path(value).is_file():
                identity[f"{key}_sha256"] = sha256_file(value)
        return identity

    # ---- the step mechanism ---------------------------------------------------------------
    def wants(self, stage: str) -> bool:
        """Whether ``stage`` is among or before the requested stages (later ones are not built)."""
        return STAGES.index(stage) <= max(STAGES.index(s) for s in self.requested)

    def _forced(self, stage: str) -> bool:
        start = self.config.from_stage
        return self.config.force or (start is not None and STAGES.index(stage) >= STAGES.index(start))

    def step(self, step_id: str, stage: str, params: dict, upstream: Iterable[dict], directory: Path,
             produce: Callable[..., dict], flatten: bool = False, resumable: bool = False) -> dict:
        """Run ``produce(tmpdir) -> outputs`` unless a record with the same inputs exists; return the record.

        A ``resumable`` step is called as ``produce(tmpdir, resume_dir)``: what it saves in ``resume_dir``
        outlives an interruption and is handed to the next call with the same inputs (not after ``--force``).
        """
        upstream = list(upstream)
        inputs_hash = sha256_json({"params": params, "upstream": [u["outputs_hash"] for u in upstream]})
        record_path = self.out / ".state" / f"{step_id.replace('/', '__')}.json"
        resume_dir = record_path.with_suffix(".resume")
        record = _read_json(record_path)
        valid = (record is not None and record["inputs_hash"] == inputs_hash
                 and all((self.out / f).is_file() for f in record["files"].values()))
        if stage not in self.requested:
            if not valid:
                raise StageOrderError(
                    f"{self.out}: stage '{stage}' has no up-to-date output ({step_id}); run "
                    f"'pipeline {'export' if stage == 'model' else stage}' or 'pipeline run' on this directory first"
                )
            return record
        if valid and not self._forced(stage):
            self.log(f"[skip] {step_id}: inputs unchanged")
            return record
        self.log(f"[run ] {step_id}")
        started = time.perf_counter()
        remove_partials(directory if flatten else directory.parent)
        if resumable:
            stamp = resume_dir / "inputs_hash"
            if self._forced(stage) or not stamp.is_file() or stamp.read_text() != inputs_hash:
                shutil.rmtree(resume_dir, ignore_errors=True)
            resume_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(inputs_hash)
            produce = partial(produce, resume_dir=resume_dir)
        if flatten:  # the outputs go straight into ``directory``, each file replaced atomically
            with atomic_dir(directory / ".staging") as tmp:
                outputs = produce(tmp)
            staging = directory / ".staging"
            for file in staging.iterdir():
                os.replace(file, directory / file.name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            with atomic_dir(directory) as tmp:
                outputs = produce(tmp)
        files = {k: (directory / v).relative_to(self.out).as_posix() for k, v in outputs.pop("files", {}).items()}
        record = {
            "step": step_id, "stage": stage, "inputs_hash": inputs_hash, "params": params, "files": files,
            "data": outputs, "seconds": round(time.perf_counter() - started, 2),
            "outputs_hash": sha256_json({"files": {k: sha256_file(self.out / v) for k, v in files.items()},
                                         "data": outputs}),
        }
        write_json(record_path, record)
        if resumable:
            shutil.rmtree(resume_dir, ignore_errors=True)
        return record

    def path(self, record: dict, key: str) -> Path:
        return self.out / record["files"][key]

    def shared(self, upstream: dict, name: str) -> tuple[str, Path]:
        """Step id and directory of a shared step made from ``upstream``'s model: the teacher's steps live in
        ``out/shared/``, a student's in ``out/shared/<student>/``, so that runs with another budget in the same
        directory keep (and skip to) each other's outputs instead of replacing them."""
        variant = upstream["step"].rpartition("/")[0]
        step_id = f"{variant}/{name}" if variant else name
        return step_id, self.out / "shared" / step_id

    # ---- shared steps ---------------------------------------------------------------------
    def model_step(self) -> dict:
        cfg = self.config
        params = {"source": self._source_identity(), "image_size": cfg.image_size,
                  "train": asdict(cfg.train) if self.source.needs_training else None,
                  "data": self.data_fingerprint}

        def produce(tmp: Path) -> dict:
            import torch

            from .train import train_classifier

            height, width, channels = self.data.image_shape
            input_shape = (1, channels, height, width)
            num_classes = len(self.data.classes)
            torch.manual_seed(cfg.train.seed)  # the same initial weights on every run
            model = build_model(self.source, channels, num_classes)
            check_input(model, input_shape, self.config.model, num_classes)
            preprocess = PreprocessSpec.from_images(self.data.train.images)
            stats = None
            if self.source.needs_training:
                model, stats = train_classifier(
                    model, self.data.train, self.data.test, preprocess, cfg.train,
                    {"model": cfg.model, "data": self.data_fingerprint},
                )
            files = {"torchscript": "model.torchscript.pt"}
            if self.source.kind in ("builtin", "factory"):
                torch.save(model.state_dict(), tmp / "weights.pt")
                files["weights"] = "weights.pt"
            _save_torchscript(model, input_shape, tmp / files["torchscript"])
            return {
                "files": files, "input_shape": list(input_shape), "classes": list(self.data.classes),
                "preprocess": asdict(preprocess), "params": count_params(model),
                "flops": count_flops(model, input_shape), "training": stats, "dataset": self.data.source,
            }

        return self.step("model", "model", params, [], self.out / "shared" / "model", produce)

    def compress_budget(self):
        """The user's budget, its unset limits filled with the strictest of the targets' profiles."""
        flops = [t.budgets.max_flops for t in self.targets if t.budgets.max_flops]
        params = [t.budgets.max_params for t in self.targets if t.budgets.max_params]
        return self.config.compress.budget.with_defaults(min(flops, default=None), min(params, default=None))

    def compress_step(self, model_record: dict) -> dict:
        """The student found by block-wise distillation under the strictest budget of the run's targets."""
        from .compress import compress
        from .stages.report import PARETO_PLOT, compression_markdown, pareto_plot

        options = self.config.compress
        budget = self.compress_budget()

        def produce(tmp: Path, resume_dir: Path) -> dict:
            data = model_record["data"]
            order = np.random.default_rng(options.seed).permutation(len(self.data.train))
            val_index = order[: options.val_samples]
            train_index = order[options.val_samples :][: options.finetune_subset]  # shuffled: block-wise takes its head
            spec = self.preprocess(model_record)
            images, labels = self.data.train.images, self.data.train.labels
            teacher_source = {"model": self.config.model, "in_channels": data["input_shape"][1],
                              "num_classes": len(data["classes"])}
            student, report = compress(
                self.load_torch(model_record), teacher_source, spec.apply(images[train_index]), labels[train_index],
                spec.apply(images[val_index]), labels[val_index], replace(options, budget=budget), tmp, resume_dir,
                (spec.apply(self.data.test.images), self.data.test.labels),
            )
            write_json(tmp / "compression.json", report)
            (tmp / "compression.md").write_text(compression_markdown(report))
            (tmp / PARETO_PLOT).write_bytes(pareto_plot(report))
            _save_torchscript(student, tuple(data["input_shape"]), tmp / "model.torchscript.pt")
            return {"files": {"torchscript": "model.torchscript.pt", "student_spec": "student.json",
                              "student_weights": "student.pt", "report": "compression.json"},
                    **{k: data[k] for k in ("input_shape", "classes", "preprocess", "dataset")},
                    "params": report["student"]["params"], "flops": report["student"]["flops"],
                    "teacher": {"params": data["params"], "flops": data["flops"]}, "compression": report}

        max_flops, max_params = budget.limits(model_record["data"]["flops"], model_record["data"]["params"])
        student = "-".join(["student", *([f"{format_count(max_flops)}flops"] if max_flops else []),
                            *([f"{format_count(max_params)}params"] if max_params else [])])
        params = {**self.config.to_dict()["compress"], "budget": asdict(budget)}
        return self.step(f"{student}/compress", "compress", params, [model_record],
                         self.out / "shared" / student / "compress", produce, resumable=True)

    def load_torch(self, model_record: dict):
        """The model as a module: rebuilt from its source with the weights the model or compress step wrote."""
        if "student_spec" in model_record["files"]:
            from .compress.student import load_student

            return load_student(self.path(model_record, "student_spec"), self.path(model_record, "student_weights"))
        weights = model_record["files"].get("weights")
        source = ModelSource(self.config.model, str(self.out / weights) if weights else None)
        data = model_record["data"]
        return build_model(source, data["input_shape"][1], len(data["classes"]))

    def preprocess(self, model_record: dict) -> PreprocessSpec:
        spec = model_record["data"]["preprocess"]
        return PreprocessSpec(tuple(spec["mean"]), tuple(spec["std"]))

    def export_step(self, model_record: dict, opset: int) -> dict:
        from .stages.export import export_onnx, onnx_parity

        def produce(tmp: Path) -> dict:
            model = self.load_torch(model_record)
            path = tmp / "model.onnx"
            shape = tuple(model_record["data"]["input_shape"])
            export_onnx(model, shape, path, opset)
            inputs = self.preprocess(model_record).apply(self.data.test.take(PARITY_SAMPLES).images)
            worst = onnx_parity(model, path, inputs, self.config.parity_atol)
            return {"files": {"onnx": "model.onnx"}, "parity_max_abs": worst, "opset": opset}

        step_id, directory = self.shared(model_record, f"export-opset{opset}")
        return self.step(step_id, "export", {"opset": opset, "atol": self.config.parity_atol},
                         [model_record], directory, produce)

    def calibrate_step(self, model_record: dict, export_record: dict) -> dict:
        options = self.config.calibration
        name = f"calibrate-opset{export_record['data']['opset']}-{options.method.value}"

        def produce(tmp: Path) -> dict:
            subset = self.data.train.take(options.num_samples, options.seed)
            inputs = self.preprocess(model_record).apply(subset.images)
            ranges = calibrate(self.path(export_record, "onnx"), "input", inputs, options)
            ranges.save(tmp / "ranges.json")
            np.save(tmp / "inputs.npy", inputs)
            np.save(tmp / "images.npy", subset.images)
            return {"files": {"ranges": "ranges.json", "inputs": "inputs.npy", "images": "images.npy"},
                    "method": options.method.value, "num_samples": len(inputs), "tensors": len(ranges.ranges)}

        params = {**asdict(options), "method": options.method.value}
        step_id, directory = self.shared(export_record, name)
        return self.step(step_id, "quantize", params, [model_record, export_record], directory, produce)

    def int8_onnx_step(self, export_record: dict, calib_record: dict, target: TargetProfile) -> dict:
        from .stages.quantize import quantize_int8

        scheme = target.int8
        name = (f"quantize-opset{export_record['data']['opset']}-{calib_record['data']['method']}-"
                f"{scheme.granularity.value}-{'sym' if scheme.activation_symmetric else 'asym'}")

        def produce(tmp: Path) -> dict:
            ranges = CalibrationRanges.load(self.path(calib_record, "ranges"))
            quantize_int8(self.path(export_record, "onnx"), ranges, tmp / "model_int8.onnx", scheme)
            return {"files": {"onnx": "model_int8.onnx"}}

        params = {"granularity": scheme.granularity.value, "symmetric": scheme.activation_symmetric}
        step_id, directory = self.shared(export_record, name)
        return self.step(step_id, "quantize", params, [export_record, calib_record], directory, produce)

    def fp16_onnx_step(self, export_record: dict) -> dict:
        from .stages.quantize import convert_fp16

        name = f"fp16-opset{export_record['data']['opset']}"

        def produce(tmp: Path) -> dict:
            convert_fp16(self.path(export_record, "onnx"), tmp / "model_fp16.onnx")
            return {"files": {"onnx": "model_fp16.onnx"}}

        step_id, directory = self.shared(export_record, name)
        return self.step(step_id, "quantize", {}, [export_record], directory, produce)

    def tflite_step(self, export_record: dict, calib_record: dict, target: TargetProfile) -> dict:
        from .stages.convert import convert_tflite, tflite_io

        scheme = target.int8
        name = (f"convert-opset{export_record['data']['opset']}-{scheme.granularity.value}-"
                f"{scheme.io_dtype.value}-{target.input_layout.value}")

        def produce(tmp: Path) -> dict:
            outputs = convert_tflite(
                self.path(export_record, "onnx"), np.load(self.path(calib_record, "inputs")),
                np.load(self.path(calib_record, "images")), tmp, scheme.granularity.value, scheme.io_dtype,
                target.input_layout,
            )
            return {"files": {k: p.name for k, p in outputs.items()},
                    "io": {k: tflite_io(p) for k, p in outputs.items()}}

        params = {"granularity": scheme.granularity.value, "io": scheme.io_dtype.value,
                  "layout": target.input_layout.value}
        step_id, directory = self.shared(export_record, name)
        return self.step(step_id, "convert", params, [export_record, calib_record], directory, produce)

    # ---- artifacts of a target ------------------------------------------------------------
    def artifacts(self, target: TargetProfile, model_record: dict, sources: dict[str, tuple[dict, str]]) -> list[Artifact]:
        """The target's artifacts, paths relative to ``out/<target>/``, the reference first."""
        target_dir = self.out / target.name
        shape = tuple(model_record["data"]["input_shape"])
        found = []
        for kind in (REFERENCE_KIND, *[k for k in ARTIFACT_KINDS if k in target.artifacts and k != REFERENCE_KIND]):
            record, key = sources[kind]
            path = self.path(record, key)
            common = {"kind": kind, "path": os.path.relpath(path, target_dir), "sha256": sha256_file(path),
                      "size_bytes": path.stat().st_size}
            if ARTIFACT_KINDS[kind].format == "tflite":
                io = record["data"]["io"][key]
                found.append(Artifact(
                    **common, input_name=io["input_name"], input_shape=tuple(io["input_shape"]),
                    input_layout=target.input_layout.value, input_dtype=io["input_dtype"],
                    output_dtype=io["output_dtype"],
                    input_quant=QuantParams(**io["input_quant"]) if io["input_quant"] else None,
                    output_quant=QuantParams(**io["output_quant"]) if io["output_quant"] else None,
                ))
            else:
                found.append(Artifact(**common, input_name="input", input_shape=shape, input_layout="NCHW",
                                      input_dtype="float32", output_dtype="float32"))
        return found

    def bundle_info(self, model_record: dict, target: TargetProfile) -> dict:
        data = model_record["data"]
        return {"model": {"source": self.config.model, "params": data["params"], "flops": data["flops"]},
                "input": {"shape": data["input_shape"], "dtype": "float32", "scale": "pixels / 255"},
                "preprocess": data["preprocess"], "classes": data["classes"],
                # onnxruntime providers the board's runtimes bring, in its order of preference; CPU last
                "execution_providers": [EXECUTION_PROVIDERS[r] for r in target.runtimes if r in EXECUTION_PROVIDERS]
                + ["CPUExecutionProvider"]}

    # ---- the whole run --------------------------------------------------------------------
    def execute(self, stages: Iterable[str] | None = None) -> dict[str, Path]:
        """Run ``stages`` (all by default) for every target; returns each target's directory."""
        self.requested = set(stages or STAGES)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "pipeline.yaml")
        model_record = self.model_step()
        if self.config.compress.enabled and self.wants("compress"):
            data = model_record["data"]
            max_flops, max_params = self.compress_budget().limits(data["flops"], data["params"])
            if data["flops"] <= (max_flops or data["flops"]) and data["params"] <= (max_params or data["params"]):
                self.log(f"[skip] compress: the model already fits the budget (FLOPs <= {max_flops or 'any'}, "
                         f"parameters <= {max_params or 'any'})")
            else:
                model_record = self.compress_step(model_record)
        results: dict[str, Path] = {}
        if not self.wants("export"):
            return results
        shared: dict[tuple, dict] = {}

        def once(key: tuple, make: Callable[[], dict]) -> dict:
            if key not in shared:
                shared[key] = make()
            return shared[key]

        for target in self.targets:
            wants = set(target.artifacts)
            export = once(("export", target.onnx_opset), lambda: self.export_step(model_record, target.onnx_opset))
            sources: dict[str, tuple[dict, str]] = {REFERENCE_KIND: (model_record, "torchscript"),
                                                    "onnx-fp32": (export, "onnx")}
            tflite = {"tflite-fp32", "tflite-fp16", "tflite-int8"}
            if self.wants("quantize") and wants & ({"onnx-int8"} | tflite):
                calib = once(("calib", target.onnx_opset), lambda: self.calibrate_step(model_record, export))
                if "onnx-int8" in wants:
                    sources["onnx-int8"] = (once(("int8", target.onnx_opset, target.int8),
                                                 lambda: self.int8_onnx_step(export, calib, target)), "onnx")
                if self.wants("convert") and wants & tflite:
                    converted = once(("tflite", target.onnx_opset, target.int8, target.input_layout),
                                     lambda: self.tflite_step(export, calib, target))
                    for precision in ("fp32", "fp16", "int8"):
                        sources[f"tflite-{precision}"] = (converted, precision)
            if self.wants("quantize") and "onnx-fp16" in wants:
                sources["onnx-fp16"] = (once(("fp16", target.onnx_opset), lambda: self.fp16_onnx_step(export)), "onnx")
            if self.wants("evaluate"):
                results[target.name] = self._target_steps(target, model_record, export, sources)
        return results

    def _target_steps(self, target: TargetProfile, model_record: dict, export: dict, sources: dict) -> Path:
        from .stages import bench as bench_stage
        from .stages import bundle as bundle_stage
        from .stages import evaluate as evaluate_stage
        from .stages import report as report_stage

        target_dir = self.out / target.name
        threads = min(target.threads, os.cpu_count() or 1)  # for evaluation on this host
        artifacts = self.artifacts(target, model_record, sources)
        artifact_records = [sources[a.kind][0] for a in artifacts]
        manifest = {**self.bundle_info(model_record, target), "artifacts": [a.to_dict() for a in artifacts]}
        write_json(target_dir / "artifacts.json", manifest)

        def evaluate(tmp: Path) -> dict:
            test = self.data.test.take(self.config.eval_samples)
            inputs = self.preprocess(model_record).apply(test.images)
            rows = evaluate_stage.evaluate_artifacts(artifacts, target_dir, inputs, test.labels, threads)
            return {"evaluations": evaluate_stage.to_dicts(rows)}

        evaluation = self.step(f"{target.name}/evaluate", "evaluate",
                               {"samples": self.config.eval_samples},
                               [model_record, *artifact_records], target_dir / "evaluate", evaluate)
        if "evaluate" in self.requested:
            evaluate_stage.check_tolerance(evaluation["data"]["evaluations"], target.accuracy_tolerance, target.name)
        bundled = None
        if self.wants("bundle") and ("bundle" in self.requested or self.config.bench.host):
            def bundle(tmp: Path) -> dict:
                bundle_stage.write_bundle(tmp, artifacts, target_dir, {"target": target.name,
                                                                       **self.bundle_info(model_record, target)})
                return {"files": {"manifest": "manifest.json"}}

            bundled = self.step(f"{target.name}/bundle", "bundle", {}, [model_record, *artifact_records],
                                target_dir / "bundle", bundle)
        if not self.wants("bench"):
            return target_dir

        options = self.config.bench
        if options.host:  # on the board, with the bundle as deployed
            from .remote import SSHTarget, remote_bench

            ssh = SSHTarget.parse(options.host, port=options.ssh_port, identity_file=options.ssh_identity,
                                  python=options.remote_python, known_hosts=options.ssh_known_hosts)
            threads, upstream = target.threads, [bundled]
            location = {"kind": "ssh", "destination": ssh.destination, "port": ssh.port}

            def measure(out_json: Path) -> dict:
                return remote_bench(ssh, self.path(bundled, "manifest").parent, target,
                                    bench_stage.runner_args(options, threads), out_json, options.timeout_s, self.log)
        else:
            # More threads than this host has cores would measure contention, not the model.
            threads, location, upstream = min(target.threads, os.cpu_count() or 1), {"kind": "local"}, artifact_records

            def measure(out_json: Path) -> dict:
                return bench_stage.bench_local(target_dir / "artifacts.json", threads, options, out_json, self.log)

        def bench(tmp: Path) -> dict:
            suite = measure(tmp / "bench.json")
            return {"files": {"suite": "bench.json"}, "results": suite["results"], "system": suite["system"],
                    "system_after": suite["system_after"], "location": suite["location"]}

        timing = {k: v for k, v in asdict(options).items() if k not in ("timeout_s",)}
        benched = self.step(f"{target.name}/bench", "bench", {"bench": timing, "threads": threads, "where": location},
                            upstream, target_dir / "bench", bench)
        if not self.wants("report"):
            return target_dir

        def report(tmp: Path) -> dict:
            budgets = target.budgets
            data = model_record["data"]
            rows = report_stage.merge_rows(evaluation["data"]["evaluations"], benched["data"]["results"],
                                           budgets.max_model_size_mb)
            content = {
                "target": target.to_dict(), "rows": rows,
                "recommendation": report_stage.recommend(rows, target.accuracy_tolerance),
                "model": {"source": self.config.model, "params": data["params"], "flops": data["flops"],
                          "input_shape": data["input_shape"], "teacher": data.get("teacher"),
                          "compression_details": os.path.relpath(self.path(model_record, "report").with_suffix(".md"),
                                                                 target_dir) if data.get("teacher") else None},
                "budget_text": _budget_text(target, data),
                "dataset": data["dataset"], "export_parity": export["data"]["parity_max_abs"],
                "calibration": {"method": self.config.calibration.method.value,
                                "num_samples": self.config.calibration.num_samples},
                "measured_on": {**benched["data"]["location"], "system": benched["data"]["system"],
                                "system_after": benched["data"]["system_after"]},
                "profile_threads": target.threads,
                "bench": {k: getattr(options, k) for k in ("repeats", "runs", "warmup", "noise_threshold")},
                "versions": bundle_stage.tool_versions(),
                "estimates": self._estimates(target, rows, data["flops"], export) if not options.host else [],
            }
            names = report_stage.write_report(content, tmp)
            return {"files": {n: n for n in names}}

        self.step(f"{target.name}/report", "report", {}, [model_record, export, evaluation, benched],
                  target_dir, report, flatten=True)
        return target_dir


    def _estimates(self, target: TargetProfile, rows: list[dict], flops: int, export: dict) -> list[dict]:
        """Roofline figures for the board from its profile, for a run that could not measure on it."""
        from .estimate import estimate_all

        if target.performance is None:
            return []
        kinds = [r["kind"] for r in rows if r["kind"] != REFERENCE_KIND]
        return [{**asdict(e), "source": target.performance.source}
                for e in estimate_all(kinds, flops, self.path(export, "onnx"), target.performance)]


def _budget_text(target: TargetProfile, data: dict) -> str:
    b = target.budgets
    parts = []
    if b.max_flops:
        parts.append(f"FLOPs {data['flops'] / 1e6:.1f}M of {b.max_flops / 1e6:.0f}M "
                     f"({'within' if data['flops'] <= b.max_flops else 'OVER'})")
    if b.max_params:
        parts.append(f"parameters {data['params'] / 1e3:.0f}k of {b.max_params / 1e3:.0f}k "
                     f"({'within' if data['params'] <= b.max_params else 'OVER'})")
    if b.max_model_size_mb:
        parts.append(f"model size at most {b.max_model_size_mb:g} MiB per artifact")
    return "; ".join(parts) or "none"


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_torchscript(model, input_shape: tuple[int, ...], path: Path) -> None:
    """The PyTorch reference artifact: a traced TorchScript file the runner can time in a fresh process."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, torch.zeros(input_shape))
            traced.save(str(path))
    except Exception as exc:
        raise ModelError(f"{path.name}: cannot trace the model to TorchScript ({str(exc).splitlines()[0][:200]})") from exc


def run(config: RunConfig | None = None, stages: Iterable[str] | None = None, **options: Any) -> dict[str, Path]:
    """Run the pipeline: ``run(targets="raspberry-pi-4")`` or ``run(build_config("pipeline.yaml"))``."""
    from .config import build_config

    return Run(config or build_config(**options)).execute(stages)
