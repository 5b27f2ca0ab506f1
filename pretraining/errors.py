"""Errors of the pre-training runner; each says what went wrong and what to do next."""

from __future__ import annotations

from rasd_hub.errors import RasdError, RasdValueError

__all__ = [
    "PretrainingError",
    "UnknownPresetError",
    "BatchSizeError",
    "ResumeMismatchError",
    "NonFiniteLossError",
    "TrainingInterrupted",
]


class PretrainingError(RasdError):
    """Base class of pre-training failures."""


class UnknownPresetError(RasdValueError):
    """``--preset`` names no known preset."""


class BatchSizeError(RasdValueError):
    """The global batch size cannot be split evenly across the ranks."""


class ResumeMismatchError(PretrainingError):
    """``--resume`` found a checkpoint of a different run (another preset or model)."""


class NonFiniteLossError(PretrainingError):
    """Too many consecutive steps had a NaN/inf loss or gradient; the run was stopped."""


class TrainingInterrupted(PretrainingError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run stopped early."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (not rank 0)"
        super().__init__(
            f"stopped by signal {signum} at step {step}; wrote {where}. "
            "Run the same command with --resume to continue."
        )
