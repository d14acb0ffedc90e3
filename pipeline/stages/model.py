"""The model step (the user's model loaded, or a built-in trained) and the compress step (its student)."""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..artifacts import plain_data, sha256_file, write_json
from ..data.labels import read_labels
from ..data.preprocess import resolve
from ..engine import Step
from ..config import Task
from ..errors import DataError, ModelError
from ..onnxmodel import OUTPUT_NAME
from ..units import format_count


def _source_identity(plan) -> dict:
    config = plan.config
    identity = {"model": config.model, "kind": plan.source.kind}
    for key, value in (("weights", config.weights), ("file", config.model), ("labels", config.labels)):
        if value and Path(value).is_file():
            identity[f"{key}_sha256"] = sha256_file(value)
    return identity


def _torch_model(plan, tmp: Path, fingerprint: str) -> dict:
    """A PyTorch model: built (and trained, for a built-in without weights), traced to TorchScript."""
    import torch

    from ..sources import build_model
    from ..torchmodel import check_detector, check_input, count_flops, count_params, save_torchscript
    from ..train import classification_objective, train_model

    config, source, data = plan.config, plan.source, plan.data
    if data is None:
        raise DataError(f"{config.model}: a PyTorch model needs --data (its input shape and classes come from it)")
    input_shape = data.input_shape
    channels, num_classes = input_shape[1], len(data.classes)
    torch.manual_seed(config.train.seed)  # the same initial weights on every run
    model = build_model(source, channels, num_classes)
    detector = plan.task is Task.DETECT
    if detector:
        output_names = check_detector(model, input_shape, config.model, plan.decoder)
    else:
        check_input(model, input_shape, config.model, num_classes)
        output_names = [OUTPUT_NAME]
    preprocess = resolve(config.preprocess, plan.carried_preprocessing, channels, data.train, config.model)
    if detector:
        from ..detection.train import detection_objective

        preprocess, objective = replace(preprocess, letterbox=tuple(input_shape[2:])), detection_objective(plan.decoder)
    else:
        objective = classification_objective(config.train)
    stats = None
    if source.needs_training:
        model, stats = train_model(model, data.train, data.test, preprocess, config.train,
                                   {"model": config.model, "data": fingerprint}, objective, plan.compute)
    files = {"torchscript": "model.torchscript.pt"}
    if source.row.keeps_weights:
        torch.save(model.state_dict(), tmp / "weights.pt")
        files["weights"] = "weights.pt"
    save_torchscript(model, input_shape, tmp / files["torchscript"])
    return {"files": files, "input_shape": list(input_shape), "preprocess": preprocess.to_dict(), "training": stats,
            "params": count_params(model), "flops": count_flops(model, input_shape), "classes": list(data.classes),
            **_task_fields(plan, output_names)}


def _task_fields(plan, output_names: list[str]) -> dict:
    """What the model's outputs mean, as the record (and every manifest) keeps it."""
    return {"task": plan.task.value, "output_names": list(output_names),
            **({"decoder": plan.decoder} if plan.decoder else {})}


def file_input_shape(plan, declared: list[int | None]) -> tuple[int, ...]:
    """A model file's NCHW input: ``--input-shape``, else the data's, else the file's own static dims."""
    config, data = plan.config, plan.data
    from_data = data.input_shape if data else None
    if config.input_shape and from_data and config.input_shape != from_data:
        raise DataError(f"{data.source}: the data gives {list(from_data)} (NCHW), --input-shape says "
                        f"{list(config.input_shape)}; resize or crop the images (--resize/--crop)")
    shape = config.input_shape or from_data
    if shape is None:
        if len(declared) != 4 or any(d is None for d in declared[1:]):
            raise ModelError(f"{config.model}: input {[d or '?' for d in declared]} has dynamic dims; give "
                             "--input-shape N,C,H,W (e.g. 1,3,224,224) or --data")
        shape = (1, *declared[1:])
    return tuple(shape)


def _preprocess_and_classes(plan, channels: int, num_outputs: int | None) -> dict:
    """The preprocessing (None for a file benchmarked alone that was given none) and the class names: the data's,
    else the labels file's, else the model file's own (its card), else the data's class indices or the output
    indices."""
    config, data = plan.config, plan.data
    given = config.preprocess.normalisation_given or plan.carried_preprocessing
    preprocess = resolve(config.preprocess, plan.carried_preprocessing, channels, data and data.train, config.model) \
        if data or given else None
    carried = plan.card.classes
    named = data and data.classes and any(c != str(i) for i, c in enumerate(data.classes))
    if named:
        classes = data.classes
    elif config.labels:
        classes = read_labels(config.labels)
        if num_outputs is not None and len(classes) != num_outputs:
            raise DataError(f"{config.labels}: {len(classes)} labels for a model with {num_outputs} outputs")
    elif carried and len(carried) >= len(data.classes if data else ()) and num_outputs in (None, len(carried)):
        classes = carried
    else:
        classes = data.classes if data and data.classes else tuple(str(i) for i in range(num_outputs or 0))
    return {"preprocess": preprocess.to_dict() if preprocess else None, "classes": list(classes)}


def _onnx_model(plan, tmp: Path, fingerprint: str) -> dict:
    """An ONNX file: its input fixed to the data's shape, weights folded, run once and counted (no torch); a
    detector's outputs decoded once, so that a decoder that cannot read them fails here."""
    from .. import onnxmodel

    config, data = plan.config, plan.data
    detector = plan.task is Task.DETECT
    shape = file_input_shape(plan, onnxmodel.declared_shape(Path(config.model), detector))
    onnxmodel.fix_and_fold(Path(config.model), shape, tmp / "model.onnx", detector)
    if detector and plan.card.split_head and config.detect is None:
        from ..detection.dense_head import split_dense_head

        try:
            split_dense_head(tmp / "model.onnx", tuple(shape[2:]))
        except ValueError as exc:
            raise ModelError(f"{config.model}: {plan.card.origin} describes a dense YOLO head, but {exc}") from exc
    params, flops = onnxmodel.count(tmp / "model.onnx")
    made = {"files": {"onnx": "model.onnx"}, "input_shape": list(shape), "training": None, "params": params,
            "flops": flops}
    if detector:
        names = onnxmodel.output_names(tmp / "model.onnx")
        _check_decoding(plan, onnxmodel.run_outputs(tmp / "model.onnx", shape), shape)
        return {**made, **_letterboxed(_preprocess_and_classes(plan, shape[1], None), shape),
                **_task_fields(plan, names)}
    outputs = onnxmodel.run_once(tmp / "model.onnx", shape, len(data.classes) if data else None, config.model)
    return {**made, **_preprocess_and_classes(plan, shape[1], outputs), **_task_fields(plan, [onnxmodel.OUTPUT_NAME])}


def _letterboxed(fields: dict, shape: tuple[int, ...]) -> dict:
    """A detector's preprocessing: images letterboxed to its input, as its data was."""
    if fields["preprocess"] is not None:
        fields["preprocess"] = {**fields["preprocess"], "letterbox": list(shape[2:])}
    return fields


def _check_decoding(plan, outputs: list[np.ndarray], shape: tuple[int, ...]) -> None:
    from board_runtime.detection import postprocess

    try:
        postprocess(outputs, tuple(shape[2:]), plan.decoder)
    except (ValueError, IndexError, KeyError) as exc:
        raise ModelError(f"{plan.config.model}: decoder '{plan.decoder['decoder']}' cannot read outputs "
                         f"{[list(o.shape) for o in outputs]} ({exc})") from exc


def _tflite_model(plan, tmp: Path, fingerprint: str) -> dict:
    """A TensorFlow Lite file, kept as it is: its input and output as the interpreter reads them, its precision,
    parameters and FLOPs from the flatbuffer; the data must have its input size."""
    from ..formats.tflite import tflite_io
    from ..tflite_file import check_builtin_only, read_tflite

    config = plan.config
    contents = read_tflite(Path(config.model))
    check_builtin_only(config.model, contents)  # the boards' runtimes (and this host's LiteRT) run builtin ops only
    shutil.copyfile(config.model, tmp / "model.tflite")
    io = tflite_io(tmp / "model.tflite")
    declared = list(io["input_shape"])
    nhwc = len(declared) == 4 and declared[3] in (1, 3) and declared[1] not in (1, 3)
    shape = file_input_shape(plan, [declared[0], declared[3], *declared[1:3]] if nhwc else declared)
    if ([shape[0], *shape[2:], shape[1]] if nhwc else list(shape)) != declared:
        raise ModelError(f"{config.model}: the file takes {declared} ({'NHWC' if nhwc else 'NCHW'}), not "
                         f"{list(shape)} (NCHW); resize or crop the images to its size (--resize/--crop)")
    detector = plan.task is Task.DETECT
    classes = _preprocess_and_classes(plan, shape[1], None if detector else io["output_shape"][-1])
    names = [o["name"] for o in io["outputs"]] or ["output"]
    return {"files": {"tflite": "model.tflite"}, "input_shape": list(shape), "training": None,
            "params": contents.params, "flops": contents.flops, "reference_kind": f"tflite-{contents.precision}",
            "io": {"tflite": {**io, "input_layout": "NHWC" if nhwc else "NCHW"}},
            **(_letterboxed(classes, shape) if detector else classes), **_task_fields(plan, names)}


# How the model step makes the model of each framework a source can be in.
MODEL_MAKERS = {"torch": _torch_model, "onnx": _onnx_model, "tflite": _tflite_model}


def model_step(plan) -> dict:
    config, source = plan.config, plan.source
    fingerprint = plan.data.fingerprint() if plan.data else None
    params = {"source": _source_identity(plan), "image_size": config.image_size, "input_shape": config.input_shape,
              "preprocess": plain_data(config.preprocess),
              "train": {**asdict(config.train), "precision": plan.compute.precision} if source.needs_training else None,
              "data": fingerprint}

    def produce(tmp: Path) -> dict:
        made = MODEL_MAKERS[source.row.framework](plan, tmp, fingerprint)
        return {**made, "dataset": plan.data.source if plan.data else None}

    return plan.run(Step("model", "model", params, [], plan.out / "shared" / "model", produce))


def compress_skip(plan) -> str | None:
    """Why the run keeps the model as it is (a model compression cannot take, or one that fits already), or None."""
    if plan.source.row.framework != "torch":
        return f"{plan.config.model} is not a PyTorch model; block-wise distillation needs a torch module"
    if plan.task is Task.DETECT and not any(v is not None for v in asdict(plan.config.compress.budget).values()):
        return ("a detector is compressed only to a budget given for it (--max-flops, --flops-ratio, ...; the boards' "
                "own do not start it yet): its distillation fine-tuning is new, not yet measured against the teacher")
    if not any(v is not None for v in asdict(plan.budget).values()):
        return (f"no budget was given for {plan.config.model} (--max-flops, --max-params, --flops-ratio, --params-ratio "
                "or --max-latency-ms; the boards' profiles budget the built-in networks only)")
    data = plan.model_record["data"]
    max_flops, max_params = plan.budget.limits(data["flops"], data["params"])
    if data["flops"] <= (max_flops or data["flops"]) and data["params"] <= (max_params or data["params"]):
        return f"the model already fits the budget (FLOPs <= {max_flops or 'any'}, parameters <= {max_params or 'any'})"
    return None


def compress_step(plan) -> dict:
    """The student found by block-wise distillation under the strictest budget of the run's targets; a latency budget
    is the first target's, weighed with the latency table of ``compress.latency_from`` (``stages.latency``)."""
    options = plan.config.compress
    budget = plan.budget
    model_record = plan.model_record

    def produce(tmp: Path, resume_dir: Path) -> dict:
        from ..compress.compressor import CLASSIFICATION, compress, detection_distillation
        from ..torchmodel import save_torchscript
        from .compression_report import PARETO_PLOT, compression_markdown, pareto_plot
        from .latency import latency_table

        data, train = model_record["data"], plan.data.train
        order = np.random.default_rng(options.seed).permutation(len(train))
        val_index = order[: options.val_samples]
        train_index = order[options.val_samples :][: options.finetune_subset]  # shuffled: block-wise takes its head
        spec = plan.preprocess()
        teacher_source = {"model": plan.config.model, "in_channels": data["input_shape"][1],
                          "num_classes": len(data["classes"]), "preprocess": data["preprocess"]}
        fit, val, test = train.subset(train_index), train.subset(val_index), plan.data.test
        student, report = compress(  # block-wise distillation holds its inputs in memory (issue 13)
            plan.load_torch(), teacher_source, spec.apply(fit.read()), fit.labels, spec.apply(val.read()), val.labels,
            replace(options, budget=budget), tmp, resume_dir, (spec.apply(test.read()), test.labels), plan.compute,
            latency_table(options.latency_from, plan.targets[0], plan.config.bench, plan.engine.log)
            if budget.max_latency_ms else None,
            detection_distillation(plan.decoder) if plan.task is Task.DETECT else CLASSIFICATION,
        )
        write_json(tmp / "compression.json", report)
        (tmp / "compression.md").write_text(compression_markdown(report))
        (tmp / PARETO_PLOT).write_bytes(pareto_plot(report))
        save_torchscript(student, tuple(data["input_shape"]), tmp / "model.torchscript.pt")
        return {"files": {"torchscript": "model.torchscript.pt", "student_spec": "student.json",
                          "student_weights": "student.pt", "report": "compression.json"},
                **{k: data[k] for k in ("input_shape", "classes", "preprocess", "dataset", "task", "output_names",
                                        "decoder") if k in data},
                "params": report["student"]["params"], "flops": report["student"]["flops"],
                "teacher": {"params": data["params"], "flops": data["flops"]}, "compression": report}

    max_flops, max_params = budget.limits(model_record["data"]["flops"], model_record["data"]["params"])
    student = "-".join(["student", *([f"{format_count(max_flops)}flops"] if max_flops else []),
                        *([f"{format_count(max_params)}params"] if max_params else []),
                        *([f"{budget.max_latency_ms:g}ms-{plan.targets[0].name}"] if budget.max_latency_ms else [])])
    params = {**plan.config.to_dict()["compress"], "budget": asdict(budget), "precision": plan.compute.precision,
              **({"latency_board": plan.config.bench.host} if options.latency_from == "board" else {})}
    return plan.run(Step(f"{student}/compress", "compress", params, [model_record],
                         plan.out / "shared" / student / "compress", produce, resumable=True))
