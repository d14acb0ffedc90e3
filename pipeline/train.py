"""Training of a built-in teacher when no weights are given, cached by everything that shapes the result."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import sha256_json, write_json
from .checkpoint import EpochCheckpoint
from .compute import Compute, resolve
from .config import ComputeOptions, TrainOptions
from .data import Dataset, PreprocessSpec
from .teachers import shipped_teacher


def cache_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "embedded-pipeline"))


def top1(model: nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 accuracy in percent over (model inputs, labels) batches."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in batches:
            correct += int((model(torch.from_numpy(inputs).to(device)).argmax(1).cpu().numpy() == labels).sum())
            total += len(labels)
    return 100.0 * correct / max(1, total)


def evaluate_torch(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy in percent on inputs in memory."""
    return top1(model, ((inputs[s : s + batch], labels[s : s + batch]) for s in range(0, len(labels), batch)))


@dataclass(frozen=True)
class Objective:
    """What a training loop minimises and how it scores the held-out split, by task."""

    loss: Callable[[nn.Module, torch.Tensor, np.ndarray, Compute], torch.Tensor]  # (model, inputs, labels, compute)
    held_out: Callable[[nn.Module, Iterable[tuple[np.ndarray, np.ndarray]]], float]  # percent
    metric: str  # the held-out figure's name
    key: str = "test_top1"  # its key in the training stats
    flip: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda labels, flipped: labels  # labels of flipped images


def classification_objective(options: TrainOptions) -> Objective:
    def loss(model, inputs, labels, compute):
        with compute.autocast():
            logits = model(inputs)
        return nn.functional.cross_entropy(logits.float(), compute.inputs(torch.from_numpy(labels)),
                                           label_smoothing=options.label_smoothing)

    return Objective(loss, top1, "top-1")


def train_classifier(
    model: nn.Module, train: Dataset, test: Dataset, preprocess: PreprocessSpec, options: TrainOptions,
    cache_key_extra: dict, compute: Compute | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``model`` with cross-entropy (or load the cached result of the same training)."""
    return train_model(model, train, test, preprocess, options, cache_key_extra, classification_objective(options),
                       compute)


def recipe_key(model: nn.Module, options: TrainOptions, cache_key_extra: dict) -> str:
    """What shapes a training's result, hashed: the options, the model and data (``cache_key_extra``) and the
    architecture, so that a built-in whose layers changed never loads older weights."""
    layout = [[name, list(value.shape)] for name, value in model.state_dict().items()]
    return sha256_json({"options": asdict(options), **cache_key_extra, "layout": layout})


def train_model(
    model: nn.Module, train: Dataset, test: Dataset, preprocess: PreprocessSpec, options: TrainOptions,
    cache_key_extra: dict, objective: Objective, compute: Compute | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``model`` on ``objective`` (or load the cached result of the same training) and return it with stats,
    on the CPU afterwards whichever device trained it."""
    compute = compute or resolve(ComputeOptions())
    recipe = recipe_key(model, options, cache_key_extra)
    shipped = shipped_teacher(recipe)
    if shipped:
        model.load_state_dict(torch.load(shipped.weights, map_location="cpu", weights_only=True))
        return model.eval(), shipped.stats(objective.key)
    key = sha256_json({"recipe": recipe, "precision": compute.precision})[:16]
    cached = cache_dir() / "teachers" / f"{key}.pt"
    if cached.is_file():
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        stats = {"cached": str(cached), objective.key: None, "seconds": 0.0}
        return model.eval(), stats

    torch.manual_seed(options.seed)
    subset = train.take(options.train_subset, options.seed)  # read a batch at a time, never whole
    steps_per_epoch = max(1, len(subset) // options.batch_size)
    with compute.training(model) as scaler:  # before the optimizer: its state lives beside the weights
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr / 2, weight_decay=options.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, options.lr, total_steps=options.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(options.seed)
        started = time.perf_counter()
        accuracy = 0.0
        # An interrupted training goes on from its last finished epoch (the file is keyed like the cache).
        checkpoint = EpochCheckpoint(cached.with_suffix(".resume.pt"), "teacher training")
        saved = checkpoint.restore(model, optimizer, schedule, generator)
        if saved:
            accuracy = saved["accuracy"]
        for epoch in range(saved["epoch"] if saved else 0, options.epochs):
            model.train()
            order = torch.randperm(len(subset), generator=generator)
            bar = tqdm(range(steps_per_epoch), desc=f"train teacher epoch {epoch + 1}/{options.epochs}", unit="batch")
            for step in bar:
                index = order[step * options.batch_size : (step + 1) * options.batch_size]
                batch = torch.from_numpy(preprocess.apply(subset.subset(index.numpy()).read()))
                labels = subset.labels[index.numpy()]
                if options.hflip:
                    flip = torch.rand(len(index), generator=generator) < 0.5
                    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
                    labels = objective.flip(labels, flip.numpy())
                loss = objective.loss(model, compute.inputs(batch), labels, compute)
                optimizer.zero_grad(set_to_none=True)
                scaler.backward(loss)
                scaler.step(optimizer)
                schedule.step()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
            accuracy = objective.held_out(model, ((preprocess.apply(x), y) for x, y in test.batches(500)))
            tqdm.write(f"epoch {epoch + 1}: test {objective.metric} {accuracy:.2f}%")
            checkpoint.save(epoch + 1, model, optimizer, schedule, generator, accuracy=accuracy)
    model = model.cpu().eval()
    stats = {"cached": None, objective.key: accuracy, "seconds": round(time.perf_counter() - started, 1),
             **compute.describe()}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, cached)
    checkpoint.path.unlink(missing_ok=True)
    write_json(cached.with_suffix(".json"), {"recipe_key": recipe, "options": asdict(options), **cache_key_extra,
                                             **stats})
    return model, stats
