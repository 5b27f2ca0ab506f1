"""The resolved settings of one pre-training run: a preset plus command-line overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from pretraining.errors import BatchSizeError
from pretraining.pdl import PDLConfig
from pretraining.presets import get_preset
from pretraining.synthesis.config import PRESETS as SYNTHESIS_PRESETS, SynthesisConfig
from rasd_hub.errors import RasdValueError

__all__ = ["TrainConfig", "PRECISIONS", "SCHEDULES", "IDENTITY_KEYS"]

PRECISIONS = ("auto", "bf16", "fp32")
#: what a checkpoint must match to be resumed (see TrainConfig.identity)
IDENTITY_KEYS = ("preset", "architecture", "model_kwargs", "spatial_dims", "size", "num_classes",
                 "synthesis", "synthesis_kwargs", "pdl")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run. Built with :meth:`from_preset`; stored in checkpoints."""

    preset: str
    architecture: str
    model_kwargs: dict[str, Any]
    spatial_dims: int
    size: int
    num_classes: int
    batch_size: int | None
    """global batch per step, split evenly across ranks; None: the preset's batch per rank."""
    per_rank_batch_size: int
    """the preset's batch per rank (used when ``batch_size`` is None)."""
    lr: float
    steps: int
    """total number of optimiser steps of the run, counted from step 0 (so resume stops at the same
    step as an uninterrupted run)."""
    synthesis: str = "official"
    synthesis_kwargs: dict[str, Any] = field(default_factory=dict)
    """fields of the synthesis preset replaced (``SynthesisConfig.with_overrides``)."""
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    """cosine schedule: final lr as a fraction of ``lr``."""
    grad_clip: float | None = None
    seed: int = 0
    out_dir: str = "rasd-pretrain"
    resume: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    """newest checkpoints to keep (older ones are deleted after a new one is safely written);
    0 keeps all."""
    log_every: int = 10
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"
    """``bf16`` autocast, ``fp32``, or ``auto``: bf16 on CUDA, fp32 on CPU."""
    grad_checkpointing: bool = False
    max_nonfinite_steps: int = 20
    """consecutive NaN/inf steps tolerated (each is skipped) before the run stops."""
    offline_pool: str | None = None
    """directory of a pre-generated fixed pool (Table 1 benchmark only); None: online synthesis."""
    offline_pool_batches: int = 50
    preview: bool = True
    export: bool = True
    pdl: PDLConfig = field(default_factory=PDLConfig)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The preset's settings with ``overrides`` (None values are ignored)."""
        p = get_preset(name)
        base = cls(
            preset=p.name, architecture=p.architecture, model_kwargs=dict(p.model_kwargs),
            spatial_dims=p.spatial_dims, size=p.size, num_classes=p.num_classes,
            batch_size=None, per_rank_batch_size=p.batch_size, lr=p.lr, steps=p.steps,
            synthesis=p.synthesis, synthesis_kwargs=dict(p.synthesis_kwargs),
            weight_decay=p.weight_decay, warmup_steps=p.warmup_steps,
            schedule=p.schedule, grad_clip=p.grad_clip, checkpoint_every=p.checkpoint_every,
            log_every=p.log_every, pdl=PDLConfig(normalize=p.pdl_normalize),
        )
        config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        config.validate()
        return config

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise RasdValueError(msg)

        if self.steps < 1:
            bad(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            bad(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            bad(f"--lr must be positive, got {self.lr}")
        if self.size < 1:
            bad(f"--size must be positive, got {self.size}")
        if self.checkpoint_every < 1:
            bad(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            bad(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.num_classes < 2:
            bad(f"need at least 2 classes, got {self.num_classes}")
        if self.synthesis not in SYNTHESIS_PRESETS:
            bad(f"--synthesis must be one of {', '.join(SYNTHESIS_PRESETS)}, got {self.synthesis!r}")
        if self.synthesis_kwargs:  # fail before a run starts, not at its first batch
            self.synthesis_config()

    def synthesis_config(self) -> SynthesisConfig:
        """The run's synthesis: its preset at the run's size and classes, then ``synthesis_kwargs``."""
        return SynthesisConfig.from_preset(
            self.synthesis, dim=self.spatial_dims, size=self.size, num_classes=self.num_classes
        ).with_overrides(self.synthesis_kwargs)

    def batch_per_rank(self, world_size: int) -> int:
        """The batch each rank synthesises and trains on; checks that the global batch divides."""
        if self.batch_size is None:
            return self.per_rank_batch_size
        if self.batch_size % world_size:
            raise BatchSizeError(
                f"--batch-size {self.batch_size} cannot be split across {world_size} ranks; "
                f"use a multiple of {world_size} (e.g. {world_size * max(1, self.batch_size // world_size)}) "
                "or leave it out to use the preset's batch per rank"
            )
        return self.batch_size // world_size

    def spatial_shape(self) -> tuple[int, ...]:
        return (self.size,) * self.spatial_dims

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for checkpoints, metrics and provenance)."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this run: same preset, same model,
        same data and loss. Run length, lr and bookkeeping may change between launches."""
        return {k: asdict(v) if is_dataclass(v) else v
                for k, v in ((k, getattr(self, k)) for k in IDENTITY_KEYS)}
