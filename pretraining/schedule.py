"""The learning-rate schedule of a pre-training run: warm-up, then constant or cosine decay.

Also what a resumed run does when this launch asks for another schedule: :func:`apply_settings`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pretraining.config import TrainConfig

__all__ = ["lr_factor", "make_scheduler", "apply_settings"]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base lr after ``step`` scheduler steps: linear warm-up over
    ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio`` at ``config.steps``."""
    warmup = config.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """``LambdaLR`` stepping :func:`lr_factor` once per optimiser step (applied or skipped)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))


def apply_settings(optimizer: torch.optim.Optimizer, scheduler, config: TrainConfig,
                   step: int) -> dict[str, Any] | None:
    """Give a restored optimiser and scheduler this launch's learning rate, schedule and weight
    decay from ``step`` on. The restored state carries the checkpoint's run's values; when they
    already agree nothing is touched (so exact resume holds) and None is returned, else a dict
    ``{"changes": [text], "lr": [old, new], "weight_decay": [old, new], "lr_at_step": [old, new]}``.
    """
    base, decay = config.lr, config.weight_decay
    current = base * lr_factor(step, config)  # what LambdaLR computes at this step
    groups = optimizer.param_groups
    before = dict(lr=groups[0]["lr"], weight_decay=groups[0]["weight_decay"],
                  base_lr=groups[0].get("initial_lr"))
    if all(g["lr"] == current and g.get("initial_lr") == base and g["weight_decay"] == decay
           for g in groups):
        return None
    for group in groups:
        group.update(initial_lr=base, lr=current, weight_decay=decay)
    scheduler.base_lrs = [base] * len(groups)
    scheduler._last_lr = [current] * len(groups)
    changes = []
    if before["base_lr"] != base:
        changes.append(f"lr {before['base_lr']:g} -> {base:g}")
    if before["lr"] != current:
        changes.append(f"learning rate at step {step} {before['lr']:.4g} -> {current:.4g}")
    if before["weight_decay"] != decay:
        changes.append(f"weight decay {before['weight_decay']:g} -> {decay:g}")
    return {"changes": changes, "lr": [before["base_lr"], base],
            "weight_decay": [before["weight_decay"], decay], "lr_at_step": [before["lr"], current]}
