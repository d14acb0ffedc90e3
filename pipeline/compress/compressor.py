"""``compress``: search, assemble and fine-tune a student of a teacher; ``finetune``: distillation from its outputs
(a classifier's logits; a detector's box distances and class scores before activation, ``Distillation``)."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import EpochCheckpoint
from ..compute import Compute, resolve
from ..config import ComputeOptions
from ..errors import ConfigError
from ..torchmodel import count_flops, count_params
from ..train import evaluate_torch
from . import distributed
from .blocks import TeacherBlock, cut_teacher, find_head
from .halving import Halving, unusable
from .options import CompressOptions
from .latency import LatencyTable
from .search import block_shapes, distill_blockwise, make_candidates, nmse, options_of, teacher_features
from .selection import Option, pareto_front, select
from .student import assemble, save_student


def _distillation_loss(student_logits, teacher_logits, labels, temperature, alpha):
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, 1), nn.functional.softmax(teacher_logits / temperature, 1),
        reduction="batchmean",
    ) * temperature**2
    return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels)


def teacher_outputs_of(run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor, compute: Compute,
                       batch: int = 512) -> tuple[torch.Tensor, ...]:
    """``run``'s outputs (the teacher's) for every sample, once: fine-tuning sees the same images every epoch (no
    augmentation), so one teacher pass replaces one per epoch."""
    with torch.no_grad(), compute.autocast():
        runs = [run(compute.inputs(x[s : s + batch])) for s in range(0, len(x), batch)]
    return tuple(torch.cat([r[i].float().cpu() for r in runs]) for i in range(len(runs[0])))


@dataclass(frozen=True)
class Distillation:
    """What fine-tuning distils from the teacher and how a model scores on the held-out split, by task."""

    targets: Callable[[nn.Module, torch.Tensor, Compute], tuple[torch.Tensor, ...]]  # the teacher's, every sample
    # (student, inputs, the targets of those inputs, their labels, options, compute) -> loss
    loss: Callable[[nn.Module, torch.Tensor, tuple[torch.Tensor, ...], np.ndarray, CompressOptions, Compute],
                   torch.Tensor]
    held_out: Callable[[nn.Module, np.ndarray, np.ndarray], float]  # percent
    metric: str  # its key in the report: val_<metric>, test_<metric>


def _classification_loss(student, inputs, targets, labels, options, compute):
    with compute.autocast():
        logits = student(inputs)
    return _distillation_loss(logits.float(), targets[0].float(), compute.inputs(torch.from_numpy(labels)),
                              options.temperature, options.alpha)


CLASSIFICATION = Distillation(lambda teacher, x, compute: teacher_outputs_of(lambda b: (teacher(b),), x, compute),
                              _classification_loss, lambda model, x, y: evaluate_torch(model, x, y), "top1")


def detection_distillation(decoder: dict) -> Distillation:
    """A detector's fine-tuning: its box distances and class scores before activation distilled from the teacher's
    (``detection.train.distillation_loss``) beside its own loss on the labels; held out, mAP50-95 as decoded."""
    from ..detection.train import distillation_loss, torch_map

    def loss(student, inputs, targets, labels, options, compute):
        return distillation_loss(student, inputs, targets, labels, options.temperature, options.alpha, compute)

    def held_out(model, x, y):
        return torch_map(model, ((x[s : s + 256], y[s : s + 256]) for s in range(0, len(x), 256)), decoder)

    return Distillation(lambda teacher, x, compute: teacher_outputs_of(teacher.raw, x, compute), loss, held_out,
                        "map50_95")


def finetune(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: np.ndarray, x_val: torch.Tensor,
             y_val: np.ndarray, options: CompressOptions, checkpoint: EpochCheckpoint | None = None,
             blocks: list[TeacherBlock] = (), head: nn.Module | None = None, compute: Compute | None = None,
             distillation: Distillation = CLASSIFICATION) -> dict:
    """End-to-end distillation from the teacher's outputs (and, with ``options.feature_weight``, a classifier's from
    its block outputs: ``blocks`` and ``head`` are the teacher cut as the student is, one block per student block),
    early-stopped on the held-out figure of ``distillation`` (top-1, or a detector's mAP50-95)."""
    compute = compute or resolve(ComputeOptions())
    teacher.eval()
    if head is not None:
        head.eval()  # a pooled head is a new Sequential around the teacher's modules
    student_outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda module, args, output: student_outputs.append(output))
             for block in student.features] if options.feature_weight else []
    steps_per_epoch = max(1, len(y) // options.batch_size)
    with compute.training(teacher, student) as scaler:  # before the optimizer: its state lives beside the weights
        targets = None if hooks else distillation.targets(teacher, x, compute)
        optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, options.lr,
                                                       total_steps=options.finetune_epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(options.seed)
        best, best_state, stale, history = -1.0, None, 0, []
        saved = checkpoint.restore(student, optimizer, schedule, generator) if checkpoint else None
        if saved:
            best, best_state, stale, history = saved["best"], saved["best_state"], saved["stale"], saved["history"]
        done = saved["epoch"] if saved else 0
        model = distributed.wrap(student)
        for epoch in range(done, options.finetune_epochs):
            if stale >= options.patience:  # early-stopped, in this call or before an interruption
                break
            model.train()
            order = torch.randperm(len(y), generator=generator)
            for step in tqdm(range(steps_per_epoch), desc=f"fine-tune student {epoch + 1}/{options.finetune_epochs}",
                             unit="batch", disable=not distributed.is_main()):
                index = distributed.shard(order[step * options.batch_size : (step + 1) * options.batch_size])
                inputs = compute.inputs(x[index])
                if hooks:  # one teacher pass gives the block outputs and, through the head, the logits
                    with torch.no_grad(), compute.autocast():
                        _, teacher_outputs = teacher_features(blocks, inputs)
                        target = (head(teacher_outputs[-1]),)
                else:
                    target = tuple(compute.inputs(t[index]) for t in targets)
                student_outputs.clear()
                loss = distillation.loss(model, inputs, target, y[index.numpy()], options, compute)
                if hooks:
                    loss = loss + options.feature_weight * sum(map(nmse, student_outputs, teacher_outputs))
                optimizer.zero_grad(set_to_none=True)
                scaler.backward(loss)
                scaler.step(optimizer)
                schedule.step()
            distributed.sync_buffers(student)
            accuracy = distillation.held_out(student, x_val, y_val)
            history.append(accuracy)
            if accuracy > best:
                best, stale = accuracy, 0
                best_state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
            else:
                stale += 1
            if checkpoint:
                checkpoint.save(epoch + 1, student, optimizer, schedule, generator, best=best, best_state=best_state,
                                stale=stale, history=history)
    for hook in hooks:
        hook.remove()
    if best_state is not None:
        student.load_state_dict(best_state)
    metric = distillation.metric
    return {f"val_{metric}_per_epoch": history, f"best_val_{metric}": best, "resumed_after_epoch": done}


def compress(teacher: nn.Module, teacher_source: dict, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
             val_y: np.ndarray, options: CompressOptions, out_dir: Path, resume_dir: Path | None = None,
             test: tuple[np.ndarray, np.ndarray] | None = None,
             compute: Compute | None = None, latency: LatencyTable | None = None,
             distillation: Distillation = CLASSIFICATION) -> tuple[nn.Module, dict]:
    """Search, assemble and fine-tune a student of ``teacher``; write student.pt and student.json.

    Returns the student and the compression report. With ``resume_dir``, both training phases save their
    state there after every epoch and an interrupted call with the same inputs goes on from it.

    ``train_x``/``val_x`` are preprocessed NCHW inputs, ``train_x`` in random order (block-wise distillation
    takes its first ``blockwise_subset`` samples, fine-tuning all of them); ``teacher_source`` ({"model", "in_channels",
    "num_classes"}) lets the student's spec rebuild the teacher-kept blocks. With ``test`` (inputs, labels: images
    neither model trained on), the report gives both models' top-1 on it too: the validation images come from the
    training split, which the teacher has seen, so only the test figures compare the two fairly. ``latency`` weighs
    every block for a latency budget (``options.budget.max_latency_ms``), and the report sets the student's
    predicted latency beside its measured one.
    """
    compute = compute or resolve(ComputeOptions())
    if options.feature_weight and distillation is not CLASSIFICATION:
        raise ConfigError("compress.feature_weight: distillation from the teacher's block outputs during fine-tuning "
                          "is built for classifiers only; set it to 0 for a detector")
    timings = {}
    started = time.perf_counter()
    torch.manual_seed(options.seed)  # candidates' initial weights: the same student for the same inputs
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    input_shape = (1, *train_x.shape[1:])
    head_name = find_head(teacher, input_shape)
    blocks, head = cut_teacher(teacher, list(options.boundaries) if options.boundaries else None, options.frozen,
                               head_name)
    teacher_flops, teacher_params = count_flops(teacher, input_shape), count_params(teacher)
    shapes = block_shapes(blocks, input_shape)
    max_flops, max_params = options.budget.limits(teacher_flops, teacher_params)
    max_latency = options.budget.max_latency_ms
    if max_latency is not None and latency is None:
        raise ConfigError("max_latency_ms: a latency budget needs a latency table to weigh the blocks with")
    candidates = [make_candidates(b, i, o, options.search_space) for b, (i, o) in zip(blocks, shapes)]
    head_costs = (count_flops(head, shapes[-1][1]), count_params(head))
    head_ms = latency.blocks(candidates, shapes, head, (max_flops, max_params, max_latency), head_costs, options.seed) \
        if max_latency is not None else 0.0
    fixed = (*head_costs, head_ms)
    options_grid = [[Option(0.0, c.flops, c.params, c.latency_ms) for c in group] for group in candidates]
    select(options_grid, max_flops, max_params, fixed, max_latency)  # fail before training when it is unreachable
    reasons = unusable(options_grid, (max_flops, max_params, max_latency), fixed)
    search = {"candidates": sum(map(len, candidates)),
              "pruned": dict(Counter(r for row in reasons for r in row if r))}
    made = [len(group) for group in candidates]
    candidates = [[c for c, reason in zip(group, row) if reason is None] for group, row in zip(candidates, reasons)]
    timings["setup_s"] = time.perf_counter() - started

    started = time.perf_counter()
    x, held_out = torch.from_numpy(train_x), torch.from_numpy(val_x[: max(256, len(val_x) // 4)])
    halving = Halving(options.halving_rate, options.halving_rungs, (max_flops, max_params, max_latency), fixed)
    search.update(distill_blockwise(blocks, candidates, x[: options.blockwise_subset], held_out,
                                    options.blockwise_epochs, options.batch_size, options.lr, options.seed,
                                    EpochCheckpoint(resume_dir and resume_dir / "blockwise.pt",
                                                    "block-wise distillation"), compute, halving))
    timings["blockwise_s"] = time.perf_counter() - started

    started = time.perf_counter()
    options_grid = options_of(candidates)
    front = pareto_front(options_grid, max_params, fixed, max_latency_ms=max_latency)
    chosen = select(options_grid, max_flops, max_params, fixed, max_latency)
    if options.pick is not None:
        if not 0 <= options.pick < len(front):
            raise ConfigError(f"pick: bad value {options.pick}, expected a Pareto point 0..{len(front) - 1}")
        chosen = front[options.pick]
    timings["selection_s"] = time.perf_counter() - started

    spec = {"teacher": teacher_source, "boundaries": [b.name for b in blocks], "head": head_name,
            "blocks": [candidates[b][c].spec for b, c in enumerate(chosen.choice)]}
    student = assemble(spec, teacher)
    for b, c in enumerate(chosen.choice):  # the block-wise trained weights
        student.features[b].load_state_dict(candidates[b][c].module.state_dict())
    for p in student.parameters():
        p.requires_grad_(True)
    started = time.perf_counter()
    tuning = finetune(student, teacher, x, train_y, val_x, val_y, options,
                      EpochCheckpoint(resume_dir and resume_dir / "finetune.pt", "fine-tuning"), blocks, head, compute,
                      distillation)
    timings["finetune_s"] = time.perf_counter() - started
    student, teacher = student.cpu().eval(), teacher.cpu()
    if distributed.is_main():
        save_student(student, spec, out_dir)
    metric = distillation.metric
    scored = lambda model: {f"val_{metric}": distillation.held_out(model, val_x, val_y),  # noqa: E731
                            **({f"test_{metric}": distillation.held_out(model, *test)} if test else {})}
    report = {
        "flop_convention": "a multiply-add counts as 2 FLOPs",
        "metric": metric,
        "budget": {"max_flops": max_flops, "max_params": max_params, "max_latency_ms": max_latency},
        "teacher": {"flops": teacher_flops, "params": teacher_params, **scored(teacher)},
        "student": {"flops": count_flops(student, input_shape), "params": count_params(student), **scored(student),
                    "predicted_flops": chosen.flops, "predicted_params": chosen.params, **tuning},
        "blocks": [{"block": blocks[b].name, "chosen": candidates[b][c].spec, "score": candidates[b][c].score,
                    "flops": candidates[b][c].flops, "params": candidates[b][c].params,
                    "candidates": made[b], "searched": len(candidates[b])} for b, c in enumerate(chosen.choice)],
        "pareto_front": [{"flops": s.flops, "params": s.params, "score": s.score,
                          "blocks": [candidates[b][c].spec["type"] for b, c in enumerate(s.choice)]} for s in front],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "search": search,
        **({"latency": {"source": latency.source, "predicted_ms": round(chosen.latency_ms, 4),
                        "per_block_call_ms": round(latency.per_block_ms, 4), "calibration": latency.calibration,
                        "measured_ms": round(latency.measure([(student, input_shape)])[0], 4),
                        "models_timed_now": latency.measured}} if max_latency is not None else {}),
        "blockwise_resumed_after_epoch": search["resumed_after_epoch"],
        "world_size": distributed.world_size(),
        "compute": compute.describe(),
        "options": {**asdict(options), "budget": asdict(options.budget)},
    }
    return student, report
