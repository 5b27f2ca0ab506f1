"""Training checkpoints: atomic writes, newest-valid lookup, and every RNG state for exact resume.

A checkpoint is ``OUT/checkpoints/step_XXXXXXX.pt``, a ``torch.save`` of plain tensors and Python
containers only (``torch.load(..., weights_only=True)`` reads it). Keys, following
``docs/architecture.md``: ``model``, ``model_config``, ``provenance`` (for ``rasd hub export``) and
the runner's ``step``, ``optimizer``, ``scheduler``, ``rng`` (one entry per rank), ``run_config``,
``nonfinite_steps``, ``format_version``.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_path",
    "list_checkpoints",
    "save_checkpoint",
    "load_checkpoint",
    "find_latest_valid",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED_KEYS = ("model", "model_config", "provenance", "step", "optimizer", "scheduler", "rng",
                 "run_config")


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
    """Write ``state`` as the checkpoint of ``step``: to a temporary file in the same directory,
    fsync'd, then renamed over the final name, so a crash or preemption mid-write never leaves a
    truncated file under a checkpoint name. Then keeps only the ``keep`` newest (0: all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(directory)
    if keep > 0:
        for _, old in list_checkpoints(directory)[keep:]:
            old.unlink(missing_ok=True)
    return final


def _fsync_dir(directory: Path) -> None:
    # make the rename itself durable; not possible on every platform, harmless to skip there
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it has the expected keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else REQUIRED_KEYS
    if missing:
        raise ValueError(f"{path} is not a pre-training checkpoint (missing {', '.join(missing)})")
    return state


def find_latest_valid(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads; unreadable (e.g. truncated) ones are
    skipped with a warning. None if there is none."""
    for _, path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path)
        except Exception as err:  # a truncated zip raises RuntimeError, garbage UnpicklingError
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", stacklevel=2)
    return None


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
