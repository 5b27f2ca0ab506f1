"""``SyntheticStream``: endless, reproducible batches for training, one distinct stream per rank."""

from __future__ import annotations

import numpy as np
import torch

from rasd_hub.errors import RasdValueError

from .config import SynthesisConfig
from .engine import resolve_device, synthesize

__all__ = ["SyntheticStream", "batch_seed"]


def batch_seed(seed: int, rank: int, step: int) -> int:
    """The generator seed of batch ``step`` of rank ``rank``: well mixed (numpy's SeedSequence), so
    nearby seeds, ranks and steps give unrelated streams."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0])


class SyntheticStream:
    """An iterable of ``(image, label)`` batches from :func:`synthesize`, forever.

    Batch ``n`` of rank ``r`` is drawn from a generator seeded by ``(seed, r, n)``, so every rank
    of a distributed run gets its own stream, and a stream can be resumed at any step without
    replaying it: :meth:`state_dict` records the seed and the step, :meth:`load_state_dict`
    restores them (the rank stays the stream's own, so one saved state resumes every rank).
    """

    def __init__(
        self,
        config: SynthesisConfig,
        batch_size: int,
        seed: int,
        rank: int = 0,
        device: str | torch.device | None = "cpu",
    ):
        for name, value in (("seed", seed), ("rank", rank)):
            if not isinstance(value, int) or value < 0:
                raise RasdValueError(f"{name} must be a non-negative integer (got {value!r})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise RasdValueError(f"batch_size must be a positive integer (got {batch_size!r})")
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.device = resolve_device(device)
        self.step = 0
        self._generator = torch.Generator(device=self.device)

    def __iter__(self) -> "SyntheticStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._generator.manual_seed(batch_seed(self.seed, self.rank, self.step))
        self.step += 1
        return synthesize(self.config, self.batch_size, generator=self._generator, device=self.device)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        try:
            seed, step = int(state["seed"]), int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise RasdValueError(
                f"not a SyntheticStream state (expected integer 'seed' and 'step'): {state!r}"
            ) from None
        self.seed, self.step = seed, step
