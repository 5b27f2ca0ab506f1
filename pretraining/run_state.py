"""Checkpoint orchestration of a pre-training run: what a checkpoint holds, writing it on rank 0,
choosing the one to resume from, and restoring every rank from it (exactly).

:class:`CheckpointedRun` is a part of :class:`pretraining.runner.Trainer`: it uses the trainer's
``config``, ``ctx``, ``model``, ``optimizer``, ``scheduler``, ``source``, ``step`` and
``checkpoint_dir``. The file format and atomic writes are :mod:`pretraining.checkpoint`'s.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from pretraining.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointUnreadableError,
    capture_rng_state,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    scan_checkpoints,
    set_aside,
)
from pretraining.config import IDENTITY_KEYS
from pretraining.errors import ResumeMismatchError
from pretraining.schedule import apply_settings

__all__ = ["CheckpointedRun", "device_name"]


class CheckpointedRun:
    """Checkpoints and resume of a :class:`~pretraining.runner.Trainer` (collective methods:
    ``checkpoint_state``, ``save``, ``resume`` run on every rank)."""

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
            "device": device_name(self.device),
            "precision": "bf16" if self.use_bf16 else "fp32",
            "num_classes": c.num_classes,
            "size": list(c.spatial_shape()),
            "synthesis": c.synthesis,
            # every range of the synthesis, so the exact data can be regenerated even if the
            # preset's defaults change later (with seed, size, num_classes and world_size: each
            # rank's stream is SyntheticStream(config, seed=seed, rank=rank))
            "synthesis_config": c.synthesis_config().to_dict(),
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
        """This launch's ``--lr``, warm-up, schedule, ``--steps`` and weight decay apply from the
        resumed step on (:func:`pretraining.schedule.apply_settings`); a change is reported."""
        changed = apply_settings(self.optimizer, self.scheduler, self.config, self.step)
        if changed is None:
            return
        self._note(f"resuming {source} with this launch's optimiser settings "
                   f"({'; '.join(changed['changes'])}), from step {self.step} on",
                   event="optimizer_settings_changed", lr=changed["lr"],
                   weight_decay=changed["weight_decay"], lr_at_step=changed["lr_at_step"])


def _identity_of(run_config: dict[str, Any]) -> dict[str, Any]:
    # checkpoints written before synthesis_kwargs existed had none
    return {k: run_config.get(k, {} if k == "synthesis_kwargs" else None) for k in IDENTITY_KEYS}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
