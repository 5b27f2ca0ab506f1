"""Learning-rate schedule for fine-tuning pre-trained weights: linear warm-up, then poly decay."""

from __future__ import annotations

from torch.optim.lr_scheduler import _LRScheduler


def warmup_epochs_for(num_epochs: int, fraction: float = 0.05) -> int:
    """5 % of the run, at least one epoch: 50 of nnU-Net's 1000 epochs, the warm-up nnssl uses."""
    return max(1, round(num_epochs * fraction))


def warmup_poly_lr(epoch: int, peak_lr: float, num_epochs: int, warmup_epochs: int,
                   exponent: float = 0.9) -> float:
    """Learning rate of ``epoch`` (0-based).

    Warm-up: ``peak * (epoch + 1) / (warmup_epochs + 1)``, rising linearly so that the first
    post-warm-up epoch is the first at the peak (even a one-epoch warm-up halves the first lr). Then nnU-Net's poly decay ``(1 - t) ** 0.9`` over the remaining
    epochs. A pure function of the epoch, so resuming from a checkpoint (which restores
    ``current_epoch``) continues the same curve.
    """
    if epoch < warmup_epochs:
        return peak_lr * (epoch + 1) / (warmup_epochs + 1)
    decay_epochs = max(1, num_epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / decay_epochs)
    return peak_lr * (1 - progress) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """Stepped once per epoch with the epoch number, like nnU-Net's ``PolyLRScheduler``."""

    def __init__(self, optimizer, peak_lr: float, num_epochs: int, warmup_epochs: int,
                 exponent: float = 0.9):
        self.peak_lr = peak_lr
        self.num_epochs = num_epochs
        self.warmup_epochs = warmup_epochs
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def get_lr(self):
        return [warmup_poly_lr(self.ctr, self.peak_lr, self.num_epochs, self.warmup_epochs,
                               self.exponent) for _ in self.optimizer.param_groups]

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        else:
            self.ctr = current_step
        lr = warmup_poly_lr(current_step, self.peak_lr, self.num_epochs, self.warmup_epochs,
                            self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
