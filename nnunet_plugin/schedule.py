"""Learning-rate schedule for fine-tuning pre-trained weights: nnU-Net's linear warm-up, then its
poly decay (``nnunetv2.training.lr_scheduler.warmup``), switched by epoch."""

from __future__ import annotations

from nnunetv2.training.lr_scheduler.warmup import Lin_incr_LRScheduler, PolyLRScheduler_offset

__all__ = ["warmup_epochs_for", "WarmupPolyLR"]


def warmup_epochs_for(num_epochs: int, fraction: float = 0.05) -> int:
    """5 % of the run, at least one epoch: 50 of nnU-Net's 1000 epochs, the warm-up nnssl uses."""
    return max(1, round(num_epochs * fraction))


class WarmupPolyLR:
    """Linear warm-up to ``peak_lr`` over ``warmup_epochs``, then poly decay to ``num_epochs``.

    nnU-Net steps its scheduler once per epoch with the epoch number (``step(current_epoch)``),
    so the rate is a pure function of the epoch and a resumed run (``--c``) continues the same
    curve. The two pieces are nnU-Net's own schedulers, as in its ``nnUNetTrainer_warmup``.
    """

    def __init__(self, optimizer, peak_lr: float, num_epochs: int, warmup_epochs: int):
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.warmup = Lin_incr_LRScheduler(optimizer, peak_lr, warmup_epochs)
        self.decay = PolyLRScheduler_offset(optimizer, peak_lr, num_epochs, warmup_epochs)

    def step(self, epoch: int) -> None:
        (self.warmup if epoch < self.warmup_epochs else self.decay).step(epoch)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]
