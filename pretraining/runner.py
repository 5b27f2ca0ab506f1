"""The pre-training loop: PDL on online synthetic batches, one process or many (``torchrun``).

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

import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pretraining.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointUnreadableError,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_writes,
    restore_rng_state,
    save_checkpoint,
    scan_checkpoints,
    set_aside,
)
from pretraining.config import IDENTITY_KEYS, TrainConfig
from pretraining.distributed import DistContext, init_distributed
from pretraining.errors import (
    NonFiniteLossError,
    PretrainingError,
    ResumeMismatchError,
    TrainingInterrupted,
)
from pretraining.metrics import MetricsLog
from pretraining.pdl import pdl_loss, prototype_assignments
from pretraining.sources import (
    BatchSource, OfflinePool, online_source, pool_identity, prepare_pool,
    synthetic_intensity_moments,
)
from rasd_hub._io import remove_stale_temporaries
from rasd_hub._manipulate import set_normalization
from rasd_hub.errors import RasdValueError

__all__ = ["Trainer", "RunResult", "StepResult", "run_pretraining", "hub_model", "lr_factor"]

ModelFactory = Callable[[TrainConfig], nn.Module]
SourceFactory = Callable[[TrainConfig, int, int, torch.device], BatchSource]


def hub_model(config: TrainConfig) -> nn.Module:
    """The preset's architecture from ``rasd_hub`` (the runner never defines models itself)."""
    from rasd_hub import create_model

    return create_model(config.architecture, in_chans=1, **config.model_kwargs)


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


class _SignalCatcher:
    """Turns SIGTERM/SIGINT into a flag the loop polls once per step (a preempted job gets to write
    a checkpoint). A second SIGINT interrupts at once. Only installable in the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Trainer:
    """One process's share of a pre-training run. Collective methods (``checkpoint_state``,
    ``save``, ``fit``) must be called on every rank."""

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
            set_normalization(self.model, dict(
                model_config["normalization"], mean=round(mean, 4), std=round(std, 4),
                moments="measured on synthetic images of this run's synthesis preset"))
        # per-rank stream for anything random inside the model (dropout, drop path)
        torch.manual_seed(config.seed + self.ctx.rank)

        self.pool_info = None
        self.source = self._build_source(build_source)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config)
        )
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

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any] | None:
        """The full training state (collective: gathers every rank's RNG and stream state);
        the dict on rank 0, None elsewhere."""
        rng = capture_rng_state(self.source.state_dict())
        all_rng = self.ctx.all_gather_object(rng)
        if not self.ctx.is_main:
            return None
        return {
            "format_version": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": dict(getattr(self.model, "rasd_config", {}) or {}),
            "provenance": self.provenance(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"world_size": self.ctx.world_size, "ranks": all_rng},
            "run_config": self.config.to_dict(),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def provenance(self) -> dict[str, Any]:
        try:
            from importlib.metadata import version

            code_version = version("rasd-hub")
        except Exception:
            code_version = "unknown"
        c = self.config
        return {
            "preset": c.preset,
            "step": self.step,
            "seed": c.seed,
            "batch_size": self.batch_per_rank * self.ctx.world_size,
            "world_size": self.ctx.world_size,
            "device": _device_name(self.device),
            "precision": "bf16" if self.use_bf16 else "fp32",
            "num_classes": c.num_classes,
            "size": list(c.spatial_shape()),
            "synthesis": c.synthesis,
            "loss": "PDL",
            "pdl": c.to_dict()["pdl"],
            # training wall time of all launches of this run (resumed ones add to it)
            "wall_seconds": round(self._wall_before + self._wall_seconds, 1),
            "code_version": f"rasd-hub {code_version}",
            "data": "purely synthetic (RaSD randomized synthesis); no real images",
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); every rank waits for it and every
        rank raises :class:`CheckpointWriteError` if it could not be written."""
        state = self.checkpoint_state()
        path = self.ctx.on_main(lambda: save_checkpoint(
            state, self.checkpoint_dir, self.step, keep=self.config.keep_checkpoints))
        self.last_checkpoint = path
        return path

    def resume(self) -> int | None:
        """Restore the newest checkpoint of ``OUT/checkpoints`` that loads; None if there are no
        checkpoint files (a fresh start). Refuses (:class:`CheckpointUnreadableError`) when there
        are files but none loads; unreadable files newer than the one resumed are set aside."""

        def choose():
            scan = scan_checkpoints(self.checkpoint_dir)
            if scan.path is None:
                if scan.unreadable:
                    raise CheckpointUnreadableError(scan.refusal(self.checkpoint_dir))
                return None, None
            for path, why in scan.unreadable:
                kept = set_aside(path)
                self._note(f"skipped unreadable checkpoint {path.name} ({why}); kept as "
                           f"{kept.name}", event="unreadable_checkpoint", file=kept.name)
            # a run killed between writing a checkpoint and pruning the old ones prunes now
            prune_checkpoints(self.checkpoint_dir, int(scan.state["step"]),
                              self.config.keep_checkpoints)
            return str(scan.path), scan.state

        found = self.ctx.on_main(choose, share=lambda value: value[0])
        path = found[0] if self.ctx.is_main else found
        if path is None:
            return None
        # every rank reads the file itself (multi-node runs need OUT on a shared file system)
        state = found[1] if self.ctx.is_main else load_checkpoint(Path(path))
        self.load_state(state, source=path)
        self.resumed_from = self.step
        self.last_checkpoint = Path(path)
        self._note(f"resuming from {path} (step {self.step})", event="resume", checkpoint=path)
        return self.step

    def _note(self, message: str, event: str, **fields) -> None:
        """Tell the user (rank 0, stderr) and record the event for metrics.jsonl."""
        if self.ctx.is_main:
            print(f"rasd pretrain: {message}", file=sys.stderr, flush=True)
            self.events.append({"event": event, **fields})

    def load_state(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        theirs = _identity_of(state["run_config"])
        ours = self.config.identity()
        if theirs != ours:
            diff = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs this run {ours[k]!r}"
                             for k in ours if theirs.get(k) != ours[k])
            raise ResumeMismatchError(
                f"{source} belongs to a different run ({diff}); resume with the same preset and "
                "model settings, or choose another --out directory"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self._wall_before = float(state["provenance"].get("wall_seconds", 0.0))
        self._apply_optimizer_settings(state, source)
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.ctx.world_size:
            restore_rng_state(ranks[self.ctx.rank])
            if ranks[self.ctx.rank].get("stream") is not None:
                self.source.load_state_dict(ranks[self.ctx.rank]["stream"])
        else:
            warnings.warn(
                f"{source} was written by {len(ranks)} ranks, this run has "
                f"{self.ctx.world_size}: weights and optimiser resume exactly, the synthesis "
                "streams start afresh from the seed", stacklevel=2,
            )

    def _apply_optimizer_settings(self, state: dict[str, Any], source: str) -> None:
        """The optimiser and scheduler state restore the learning rate and weight decay of the
        checkpoint's run; this run's values (``--lr``, warm-up, schedule, ``--steps``, weight
        decay) apply from the resumed step on, and a change is reported. When nothing changed the
        values are already identical and nothing is touched, so exact resume holds."""
        base, decay = self.config.lr, self.config.weight_decay
        current = base * lr_factor(self.step, self.config)  # what LambdaLR computes at this step
        groups = self.optimizer.param_groups
        before = dict(lr=groups[0]["lr"], weight_decay=groups[0]["weight_decay"],
                      base_lr=groups[0].get("initial_lr"))
        if all(g["lr"] == current and g.get("initial_lr") == base and g["weight_decay"] == decay
               for g in groups):
            return
        for group in groups:
            group.update(initial_lr=base, lr=current, weight_decay=decay)
        self.scheduler.base_lrs = [base] * len(groups)
        self.scheduler._last_lr = [current] * len(groups)
        changes = []
        if before["base_lr"] != base:
            changes.append(f"lr {before['base_lr']:g} -> {base:g}")
        if before["lr"] != current:
            changes.append(f"learning rate at step {self.step} {before['lr']:.4g} -> {current:.4g}")
        if before["weight_decay"] != decay:
            changes.append(f"weight decay {before['weight_decay']:g} -> {decay:g}")
        self._note(f"resuming {source} with this launch's optimiser settings ({'; '.join(changes)}), "
                   f"from step {self.step} on", event="optimizer_settings_changed",
                   lr=[before["base_lr"], base], weight_decay=[before["weight_decay"], decay],
                   lr_at_step=[before["lr"], current])

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
        from pretraining.preview import save_preview

        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast():
            features = self.model(image[:4])
        self.model.train(was_training)
        assigned = prototype_assignments(features, label[:4], self.config.num_classes,
                                         self.config.pdl.normalize)
        return save_preview(self.out_dir / name, image[:4], label[:4], assigned)

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
            with _SignalCatcher() as signals:
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


def _identity_of(run_config: dict[str, Any]) -> dict[str, Any]:
    return {k: run_config.get(k) for k in IDENTITY_KEYS}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


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
        ctx.shutdown()
