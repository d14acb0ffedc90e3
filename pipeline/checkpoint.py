"""Epoch checkpoints of the training loops (teacher training, block-wise distillation, fine-tuning).

Training takes minutes to hours; an interrupted run goes on from the last finished epoch. After every
epoch a loop saves everything it needs to continue bit for bit: weights, optimizer and schedule state,
the shuffling generator, the early-stopping bookkeeping. Where the file lives is the caller's choice
(the runner's per-step resume directory, dropped when the inputs change or the step succeeds).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm


class EpochCheckpoint:
    """The state at the end of the last finished epoch of one phase; a no-op without a path."""

    def __init__(self, path: Path | None, phase: str):
        self.phase = phase
        self.path = Path(path) if path is not None else None

    def restore(self, model: torch.nn.Module, optimizer, schedule, generator: torch.Generator) -> dict | None:
        """Put the saved training state into the loop's objects; return the saved state (its ``epoch`` and
        the loop's own entries), or None when there is nothing to resume."""
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)  # copied onto the loop's device
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        tqdm.write(f"resuming {self.phase} after epoch {state['epoch']} ({self.path})")
        return state

    def save(self, epoch: int, model: torch.nn.Module, optimizer, schedule, generator: torch.Generator,
             **extra) -> None:
        """The state after ``epoch`` finished epochs, written whole or not at all (a temp file renamed over
        the last one); ``extra`` holds the loop's own bookkeeping (tensors, numbers, lists, dicts)."""
        if self.path is None or (dist.is_initialized() and dist.get_rank() != 0):  # one writer under DDP
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "generator": generator.get_state(), **extra}, tmp)
        os.replace(tmp, self.path)
