"""The pre-training loop: PDL on online synthetic batches, one process or many (``torchrun``).

Parts, one job each: this module (the model, data source, optimiser, training step and loop, and
:func:`run_pretraining`), :mod:`pretraining.run_state` (what a checkpoint holds, saving, choosing
and restoring the one to resume), :mod:`pretraining.schedule` (warm-up + cosine, new settings on
resume), :mod:`pretraining.signals` (SIGTERM/SIGINT -> checkpoint and stop),
:mod:`pretraining.preview` (the PNGs), ``rasd_hub.convert.export_checkpoint`` (the export).

:func:`run_pretraining` is what ``rasd pretrain`` and ``python -m pretraining`` call. One
:class:`Trainer` per process: it builds the model with ``rasd_hub.create_model`` (or an injected
factory), its rank's synthetic stream, AdamW with an optional warm-up + cosine schedule, and
runs ``config.steps`` optimiser steps in total, writing

* ``OUT/checkpoints/step_XXXXXXX.pt`` every ``checkpoint_every`` steps, at the end, and when
  SIGTERM/SIGINT arrives (rank 0 writes, atomically; see :mod:`pretraining.checkpoint`);
* ``OUT/metrics.jsonl``; ``OUT/preview_start.png`` (at step 0) / ``OUT/preview_end.png``;
* ``OUT/export/`` at the end, in ``rasd_hub``'s weights format: ``rasd hub export`` of the final
  checkpoint (the same function, so both routes give the same folder).

Exactness: a checkpoint holds the model, optimiser, scheduler, step and every RNG state of every
rank including the synthesis streams, and nothing in the loop draws randomness outside those, so
2N steps in one go and N + resume + N give bitwise identical weights on the same hardware (also
after a ``kill -9`` at any instant: ``pretraining.faults`` measures it).

Resume (``--resume``): no checkpoint files at all is a fresh start. Otherwise the newest
checkpoint that loads is resumed; newer files that do not load are renamed ``*.unreadable`` (kept,
never resumed from or pruned) and reported; if none loads the run refuses to start rather than
silently restarting at step 0. A new ``--lr``, schedule or weight decay applies from the resumed
step on (reported on stderr and in metrics.jsonl); the model and data geometry cannot change.
"""

from __future__ import annotations

import gc
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pretraining.checkpoint import list_checkpoints, remove_stale_writes
from pretraining.config import TrainConfig
from pretraining.distributed import DistContext, init_distributed
from pretraining.errors import NonFiniteLossError, PretrainingError, TrainingInterrupted
from pretraining.metrics import MetricsLog
from pretraining.pdl import pdl_loss
from pretraining.preview import save_prototype_preview
from pretraining.run_state import CheckpointedRun
from pretraining.schedule import lr_factor, make_scheduler
from pretraining.signals import StopSignals
from pretraining.sources import (
    BatchSource, OfflinePool, online_source, pool_identity, prepare_pool,
    synthetic_intensity_moments,
)
from rasd_hub._io import remove_stale_temporaries
from rasd_hub._manipulate import set_normalization
from rasd_hub.errors import RasdValueError

# lr_factor is re-exported: the schedule used to live here
__all__ = ["Trainer", "RunResult", "StepResult", "run_pretraining", "hub_model", "lr_factor"]

ModelFactory = Callable[[TrainConfig], nn.Module]
SourceFactory = Callable[[TrainConfig, int, int, torch.device], BatchSource]


def hub_model(config: TrainConfig) -> nn.Module:
    """The preset's architecture from ``rasd_hub`` (the runner never defines models itself)."""
    from rasd_hub import create_model

    return create_model(config.architecture, in_chans=1, **config.model_kwargs)


@dataclass
class StepResult:
    """One optimiser step (or a skipped one, ``applied=False``)."""

    loss: float
    separation: float
    clustering: float
    grad_norm: float
    applied: bool


@dataclass
class RunResult:
    """What a finished (or already complete) run produced."""

    step: int
    out_dir: Path
    final_loss: float | None
    checkpoint: Path | None
    export_dir: Path | None
    previews: list[Path] = field(default_factory=list)
    nonfinite_steps: int = 0
    resumed_from: int | None = None
    wall_seconds: float = 0.0
    synthesis_seconds: float = 0.0
    rank: int = 0


class Trainer(CheckpointedRun):
    """One process's share of a pre-training run: model, data source, optimiser, the training
    step and loop. Checkpoints and resume are :class:`~pretraining.run_state.CheckpointedRun`'s,
    the schedule :mod:`pretraining.schedule`'s, previews :mod:`pretraining.preview`'s, stop
    signals :mod:`pretraining.signals`'. Collective methods (``checkpoint_state``, ``save``,
    ``resume``, ``fit``) must be called on every rank."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: DistContext | None = None,
        build_model: ModelFactory | None = None,
        build_source: SourceFactory | None = None,
        progress: bool = True,
    ):
        self.config = config
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.progress = progress
        self.out_dir = config.out_path
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.batch_per_rank = config.batch_per_rank(self.ctx.world_size)
        self.use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and self.device.type == "cuda"
        )

        # every rank builds the same initial weights (DDP would broadcast rank 0's anyway)
        torch.manual_seed(config.seed)
        self.model = (build_model or hub_model)(config).to(self.device)
        model_config = getattr(self.model, "rasd_config", None) or {}
        divisor = int(model_config.get("input_divisor", 1))
        smallest = int(model_config.get("min_input_size", 1))
        if config.size % divisor or config.size < smallest:
            fit = max(smallest, divisor, config.size // divisor * divisor)
            raise RasdValueError(
                f"{config.architecture} needs image sizes that are multiples of {divisor} and at "
                f"least {smallest}; --size {config.size} is not (try {fit})"
            )
        if config.grad_checkpointing:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise RasdValueError(
                    f"{config.architecture} does not support --grad-checkpointing"
                )
            self.model.set_grad_checkpointing(True)
        if "normalization" in model_config:
            # Fine-tuning maps real intensities onto the moments the network sees here
            # (nnunet_plugin.normalization), so checkpoints and exports state them, measured.
            mean, std = synthetic_intensity_moments(config, device=self.device)
            footing = dict(model_config["normalization"])
            if config.synthesis_config().zscore:
                footing = {"method": "zscore", "description": "per image (x - mean) / std, as the "
                           "synthetic pre-training data (synthesis zscore=true)"}
            set_normalization(self.model, dict(
                footing, mean=round(mean, 4), std=round(std, 4),
                moments="measured on synthetic images of this run's synthesis preset"))
        # per-rank stream for anything random inside the model (dropout, drop path)
        torch.manual_seed(config.seed + self.ctx.rank)

        self.pool_info = None
        self.source = self._build_source(build_source)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, config)
        self.step = 0
        self.nonfinite_steps = 0
        self.resumed_from: int | None = None
        self.last_checkpoint: Path | None = None
        self.events: list[dict[str, Any]] = []  # resume notes, logged to metrics.jsonl by fit()
        self._wall_before = 0.0
        self._wall_seconds = 0.0  # this launch's training time, set by run()

        self.forward_module: nn.Module = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.compile:
            self.forward_module = torch.compile(self.forward_module)

    # ---------------------------------------------------------------- setup
    def _build_source(self, build_source: SourceFactory | None) -> BatchSource:
        config = self.config
        factory = build_source or online_source
        if config.offline_pool is None:
            return factory(config, self.ctx.rank, self.batch_per_rank, self.device)
        # offline (Table 1 benchmark): rank 0 fills the pool from its stream, everyone reads it
        def fill():
            generator = factory(config, 0, self.batch_per_rank, self.device)
            identity = pool_identity(config, self.batch_per_rank, config.offline_pool_batches)
            return prepare_pool(generator, Path(config.offline_pool),
                                config.offline_pool_batches, identity)

        self.pool_info = self.ctx.on_main(fill)
        return OfflinePool(Path(config.offline_pool), self.device, self.ctx.rank,
                           self.ctx.world_size)

    # ---------------------------------------------------------------- training
    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.use_bf16)

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> StepResult:
        """Forward, PDL loss, backward, clip, update. A step whose loss or gradient is not finite
        changes neither weights nor optimiser state. In DDP the gradient norm is computed after
        the all-reduce, so every rank takes the same decision."""
        self.forward_module.train()
        with self.autocast():
            features = self.forward_module(image)
        out = pdl_loss(features, label, self.config.num_classes, self.config.pdl)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # one device-to-host read per step for the decision and the logged values
        loss, separation, clustering, norm = torch.stack(
            [out.loss.detach().float(), out.separation.detach().float(),
             out.clustering.detach().float(), grad_norm.detach().float()]).tolist()
        loss_ok = math.isfinite(loss)
        if self.ctx.distributed:  # a loss that is inf with finite gradients: skip everywhere
            loss_ok = not self.ctx.any_flag(not loss_ok)
        applied = loss_ok and math.isfinite(norm)
        if applied:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        # the schedule follows the step count, applied or not, so resume needs no bookkeeping
        self.scheduler.step()
        return StepResult(loss, separation, clustering, norm, applied)

    def preview(self, image: torch.Tensor, label: torch.Tensor, name: str) -> Path | None:
        """Rank 0: save a preview PNG with the model's prototype assignments. Uses no randomness
        and changes no state, so it does not disturb exact resume."""
        if not (self.ctx.is_main and self.config.preview):
            return None
        return save_prototype_preview(self.model, image, label, self.config, self.out_dir / name,
                                      autocast=self.autocast)

    def fit(self) -> RunResult:
        """Train until ``config.steps``; collective."""
        config, ctx = self.config, self.ctx
        started = time.perf_counter()
        metrics = MetricsLog(self.out_dir / "metrics.jsonl", resume_step=self.resumed_from) \
            if ctx.is_main else None
        if metrics is not None:
            for event in self.events:
                metrics.log({"step": self.step, **event})
        if self.pool_info is not None and metrics is not None:
            metrics.log({"step": self.step, "event": "offline_pool", **vars(self.pool_info)})
        previews: list[Path] = []
        last: StepResult | None = None
        consecutive_bad = 0
        synth_total = 0.0
        window_start, window_steps, window_synth = time.perf_counter(), 0, 0.0
        bar = _progress_bar(config.steps, self.step, enabled=self.progress and ctx.is_main)
        checkpoint = None
        image = label = None
        try:
            with StopSignals() as signals:
                while self.step < config.steps:
                    t0 = time.perf_counter()
                    image, label = next(self.source)
                    synth = time.perf_counter() - t0
                    synth_total += synth
                    window_synth += synth
                    if self.step == 0 and self.config.preview and ctx.is_main:
                        previews.append(self.preview(image, label, "preview_start.png"))
                    last = self.train_step(image, label)
                    self.step += 1
                    window_steps += 1
                    if last.applied:
                        consecutive_bad = 0
                    else:
                        self.nonfinite_steps += 1
                        consecutive_bad += 1
                        if consecutive_bad >= config.max_nonfinite_steps:
                            good = list_checkpoints(self.checkpoint_dir)
                            raise NonFiniteLossError(
                                f"{consecutive_bad} consecutive steps had a non-finite loss or "
                                f"gradient (up to step {self.step}); stopped. The last good "
                                f"checkpoint is {good[0][1] if good else 'none'}; try a lower "
                                "--lr, --precision fp32 or gradient clipping"
                            )
                    if metrics is not None and (self.step % config.log_every == 0
                                                or self.step == config.steps):
                        elapsed = time.perf_counter() - window_start
                        metrics.log({
                            "step": self.step, "loss": last.loss, "separation": last.separation,
                            "clustering": last.clustering, "grad_norm": last.grad_norm,
                            "lr": self.scheduler.get_last_lr()[0],
                            "steps_per_s": window_steps / elapsed if elapsed > 0 else None,
                            # approximate on CUDA (not synchronised, to keep the loop
                            # asynchronous); `rasd bench train` measures it exactly
                            "synthesis_share": window_synth / elapsed if elapsed > 0 else None,
                            "nonfinite_steps": self.nonfinite_steps,
                        })
                        window_start, window_steps, window_synth = time.perf_counter(), 0, 0.0
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{last.loss:.4f}", refresh=False)
                    if ctx.any_flag(signals.signum is not None):
                        self._wall_seconds = time.perf_counter() - started
                        path = self.save()
                        raise TrainingInterrupted(signals.signum or signal.SIGTERM, self.step,
                                                  str(path) if path else None)
                    # no periodic checkpoint inside a run of skipped steps: if the run stops
                    # there, the newest checkpoint is one from before the trouble began
                    periodic = self.step % config.checkpoint_every == 0 and consecutive_bad == 0
                    if periodic or self.step == config.steps:
                        self._wall_seconds = time.perf_counter() - started
                        checkpoint = self.save()
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()

        if image is not None and ctx.is_main and self.config.preview:
            previews.append(self.preview(image, label, "preview_end.png"))
        if checkpoint is None:  # already complete when launched: the resumed checkpoint
            checkpoint = self.last_checkpoint
        export_dir = self.export() if config.export else None
        return RunResult(
            step=self.step, out_dir=self.out_dir, final_loss=last.loss if last else None,
            checkpoint=checkpoint, export_dir=export_dir,
            previews=[p for p in previews if p is not None],
            nonfinite_steps=self.nonfinite_steps, resumed_from=self.resumed_from,
            wall_seconds=time.perf_counter() - started, synthesis_seconds=synth_total,
            rank=ctx.rank,
        )

    def export(self) -> Path | None:
        """Rank 0: ``rasd hub export`` of the final checkpoint into ``OUT/export`` (published as a
        whole: a reader sees the previous export or the new one); every rank waits for it."""
        def write():
            from rasd_hub.convert import export_checkpoint

            if self.last_checkpoint is None:
                raise PretrainingError("no checkpoint to export (the run has not saved one)")
            return export_checkpoint(self.last_checkpoint, self.out_dir / "export")

        return self.ctx.on_main(write)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def run_pretraining(
    config: TrainConfig,
    build_model: ModelFactory | None = None,
    build_source: SourceFactory | None = None,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) the pre-training described by ``config`` in this process; under
    ``torchrun`` every rank calls this and they train together with DDP."""
    ctx = init_distributed(config.device)
    try:
        def check_out():
            if list_checkpoints(config.out_path / "checkpoints") and not config.resume:
                raise PretrainingError(
                    f"{config.out_path} already holds checkpoints; pass --resume to continue that "
                    "run or choose another --out directory")
            # what killed writers left (one run per OUT, so they are this run's own)
            remove_stale_temporaries(config.out_path)
            remove_stale_writes(config.out_path / "checkpoints")

        ctx.on_main(check_out)
        trainer = Trainer(config, ctx, build_model=build_model, build_source=build_source,
                          progress=progress)
        if config.resume:
            trainer.resume()
        return trainer.fit()
    finally:
        # DDP's reducer keeps the process group alive: if it outlived destroy_process_group,
        # gloo's worker threads would be torn down during interpreter exit and abort the
        # process (SIGABRT, "terminate called without an active exception") after a good run
        trainer = None
        gc.collect()
        ctx.shutdown()
