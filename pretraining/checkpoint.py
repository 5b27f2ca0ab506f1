"""Training checkpoints: atomic writes, newest-valid lookup, and every RNG state for exact resume.

A checkpoint is ``OUT/checkpoints/step_XXXXXXX.pt``, a ``torch.save`` of plain tensors and Python
containers only (``torch.load(..., weights_only=True)`` reads it). Keys, following
``docs/architecture.md``: ``model``, ``model_config``, ``provenance`` (for ``rasd hub export``) and
the runner's ``step``, ``optimizer``, ``scheduler``, ``rng`` (one entry per rank), ``run_config``,
``nonfinite_steps``, ``format_version``.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretraining.errors import PretrainingError
from rasd_hub._io import atomic_path, remove_stale_temporaries

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointWriteError",
    "CheckpointUnreadableError",
    "CheckpointScan",
    "checkpoint_path",
    "list_checkpoints",
    "save_checkpoint",
    "prune_checkpoints",
    "load_checkpoint",
    "scan_checkpoints",
    "set_aside",
    "remove_stale_writes",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")
#: temporary names of writers before rasd_hub._io's (".step_0000002.pt.PID.tmp")
_LEGACY_TEMPORARIES = (".step_*.pt.*.tmp",)
UNREADABLE_SUFFIX = ".unreadable"
REQUIRED_KEYS = ("model", "model_config", "provenance", "step", "optimizer", "scheduler", "rng",
                 "run_config")
_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)}


class CheckpointWriteError(PretrainingError):
    """A checkpoint could not be written (full disk, quota, permissions); the previous checkpoints
    are intact."""


class CheckpointUnreadableError(PretrainingError):
    """``--resume`` found checkpoint files but none of them loads; nothing was changed."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoint files in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int = 0) -> Path:
    """Write ``state`` as the checkpoint of ``step`` with rasd_hub's atomic writer (temporary file,
    fsync, rename, fsync of the directory), so a crash, ``kill -9`` or full disk mid-write never
    leaves a truncated file under a checkpoint name. Then deletes older checkpoints beyond the
    ``keep`` newest (0: keeps all); never the one just written, never a newer one.

    Raises :class:`CheckpointWriteError` (the previous checkpoints untouched) when it cannot write.
    """
    directory = Path(directory)
    final = checkpoint_path(directory, step)
    try:
        with atomic_path(final) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError
        previous = list_checkpoints(directory)
        intact = (f"The previous checkpoint {previous[0][1].name} is intact" if previous
                  else "No earlier checkpoint exists")
        detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.errno not in _DISK_ERRNOS:
            raise CheckpointWriteError(
                f"could not write checkpoint {final}: {detail}. {intact}; fix that and run the "
                "same command with --resume.") from err
        try:
            free = f"; {shutil.disk_usage(directory).free / 2**20:.0f} MiB are free there now"
        except OSError:
            free = ""
        raise CheckpointWriteError(
            f"could not write checkpoint {final}: the disk is full or over quota, or a file-size "
            f"limit applies (check `df -h {directory}` and `ulimit -f`{free}). {intact}; free "
            f"space and run the same command with --resume. (The writer said: {detail})"
        ) from err
    prune_checkpoints(directory, step, keep)
    return final


def prune_checkpoints(directory: Path, step: int, keep: int) -> None:
    """Delete the checkpoints older than ``step`` beyond the ``keep`` newest up to and including
    ``step`` (0: keep all). Never ``step`` itself, never a newer file."""
    if keep > 0:
        older = [path for s, path in list_checkpoints(directory) if s < step]
        for old in older[keep - 1:]:
            old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it has the expected keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else REQUIRED_KEYS
    if missing:
        raise ValueError(f"{path} is not a pre-training checkpoint (missing {', '.join(missing)})")
    return state


@dataclass
class CheckpointScan:
    """What ``--resume`` found: the newest checkpoint that loads (if any) and the newer files that
    did not load, with the reason."""

    path: Path | None = None
    state: dict[str, Any] | None = None
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def refusal(self, directory: Path) -> str:
        """The message when files exist but none loads."""
        listing = "; ".join(f"{p.name}: {why}" for p, why in self.unreadable[:5])
        more = f" and {len(self.unreadable) - 5} more" if len(self.unreadable) > 5 else ""
        return (
            f"--resume: none of the {len(self.unreadable)} checkpoints in {directory} can be read "
            f"({listing}{more}). Nothing was changed. Restarting at step 0 would silently discard "
            "that run, so this is an error: restore a good copy of a checkpoint there, or move "
            f"the folder away (e.g. `mv {directory} {directory}.unreadable`) to start the run "
            "afresh, then run the same command again."
        )


def scan_checkpoints(directory: Path) -> CheckpointScan:
    """Find the newest checkpoint in ``directory`` that loads; the newer ones that do not (a
    truncated or foreign file) are listed in ``unreadable``, none is changed."""
    scan = CheckpointScan()
    for _, path in list_checkpoints(directory):
        try:
            scan.state = load_checkpoint(path)
            scan.path = path
            return scan
        except Exception as err:  # a truncated zip raises RuntimeError, garbage UnpicklingError
            reason = str(err).split(". ")[0].splitlines()[0][:160] if str(err) else ""
            scan.unreadable.append((path, reason or type(err).__name__))
    return scan


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to ``NAME.unreadable`` (kept for inspection, no longer a
    checkpoint name: never resumed from, never counted or deleted by pruning)."""
    target = path.with_name(path.name + UNREADABLE_SUFFIX)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{UNREADABLE_SUFFIX}.{n}")
        n += 1
    path.rename(target)
    return target


def remove_stale_writes(directory: Path) -> list[Path]:
    """Delete temporary files of checkpoint writes that were killed (the run's rank 0 is the only
    writer of its checkpoint folder)."""
    return remove_stale_temporaries(directory, _LEGACY_TEMPORARIES)


def capture_rng_state(stream_state: Any = None) -> dict[str, Any]:
    """All RNG states of this process (torch CPU, every CUDA device, Python's ``random``, NumPy's
    global generator) plus the synthesis stream's state, as weights_only-loadable values."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": _python_state(),
        "stream": stream_state,
    }
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")),
                          "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # numpy is a dependency, but the runner does not need it
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (the stream state is restored by the caller)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["cached"]))


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
