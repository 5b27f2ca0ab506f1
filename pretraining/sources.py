"""Where training batches come from.

A *batch source* is an iterator of ``(image, label)`` batches with ``state_dict()`` and
``load_state_dict()``, so that a checkpoint can capture its position exactly.

* :func:`online_source`: the synthesis engine's :class:`SyntheticStream` on the training device, a
  fresh batch every step, one independent stream per rank (the default and the paper's method).
* :class:`OfflinePool`: a fixed pool pre-generated to disk and cycled through. It exists only so the
  paper's Table 1 (online vs offline: preparation time and storage) can be reproduced.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from pretraining import synthesis
from pretraining.errors import PretrainingError
from rasd_hub._io import atomic_path, write_json_atomic

__all__ = ["BatchSource", "online_source", "synthetic_intensity_moments",
           "OfflinePool", "PoolInfo", "prepare_pool", "pool_identity"]


class BatchSource(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def online_source(config, rank: int, batch_size: int, device: torch.device) -> BatchSource:
    """This rank's synthetic stream: seeded by ``(seed, rank)``, generated on ``device``."""
    return synthesis.SyntheticStream(
        config.synthesis_config(), batch_size=batch_size, seed=config.seed, rank=rank, device=device
    )


def synthetic_intensity_moments(config, samples: int = 16, device: torch.device | str = "cpu",
                                seed_offset: int = 7919) -> tuple[float, float]:
    """Mean and std of the intensities of ``samples`` synthetic images of ``config``'s preset.

    Drawn from a stream of its own (``seed + seed_offset``), so measuring never shifts the
    training streams and the result is the same however the run was split by resumes.
    """
    stream = synthesis.SyntheticStream(config.synthesis_config(), batch_size=1,
                                       seed=config.seed + seed_offset, device=device)
    total = total_sq = count = 0.0
    for _ in range(samples):
        image = next(stream)[0].double()
        total += float(image.sum())
        total_sq += float((image * image).sum())
        count += image.numel()
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0) ** 0.5


@dataclass(frozen=True)
class PoolInfo:
    """How long the offline pool took to generate and how much disk it uses."""

    directory: str
    batches: int
    samples: int
    seconds: float
    bytes: int


POOL_MANIFEST = "pool.json"


def pool_identity(config, batch_size: int, batches: int) -> dict[str, Any]:
    """What an offline pool was generated from; a pool is reused only for the same values."""
    return {"synthesis": config.synthesis, "spatial_dims": config.spatial_dims,
            "size": config.size, "num_classes": config.num_classes, "seed": config.seed,
            "batch_size": batch_size, "batches": batches}


def prepare_pool(source: BatchSource, directory: Path, batches: int,
                 identity: dict[str, Any] | None = None) -> PoolInfo:
    """Draw ``batches`` batches from ``source`` and store them as ``batch_XXXXX.pt`` files (images
    float32, labels uint8, as an offline pipeline would keep them), each written atomically, with
    ``pool.json`` recording ``identity``. A pool in ``directory`` is reused (and completed if it
    was interrupted) only when its ``pool.json`` matches; any other pool there is refused."""
    directory = Path(directory)
    manifest = directory / POOL_MANIFEST
    identity = dict(identity or {"batches": batches})
    existing = sorted(directory.glob("batch_*.pt")) if directory.is_dir() else []
    if manifest.exists() or existing:
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if recorded != identity:
            diff = (", ".join(f"{k}: pool {recorded.get(k)!r} vs this run {v!r}"
                              for k, v in identity.items() if recorded.get(k) != v)
                    if isinstance(recorded, dict) else f"no readable {POOL_MANIFEST} says which")
            raise PretrainingError(
                f"offline pool {directory} was generated for other settings ({diff}); delete it "
                "or pass another --offline POOL_DIR")
    else:
        write_json_atomic(manifest, identity)
    start = time.perf_counter()
    samples = 0
    for i in range(batches):
        path = directory / f"batch_{i:05d}.pt"
        if path.exists():
            samples += torch.load(path, weights_only=True)["label"].shape[0]
            continue
        image, label = next(source)
        samples += image.shape[0]
        with atomic_path(path) as tmp:
            torch.save({"image": image.cpu(), "label": label.to(torch.uint8).cpu()}, tmp)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in directory.glob("batch_*.pt"))
    return PoolInfo(str(directory), batches, samples, seconds, size)


class OfflinePool:
    """Cycles through a pool written by :func:`prepare_pool`; each rank starts at its own offset.
    Batches are read from disk every step, as an offline data loader would."""

    def __init__(self, directory: Path, device: torch.device, rank: int = 0, world_size: int = 1):
        self.files = sorted(Path(directory).glob("batch_*.pt"))
        if not self.files:
            raise PretrainingError(f"offline pool {directory} holds no batch_*.pt files")
        self.device = device
        self.position = rank % len(self.files)
        self.stride = world_size

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.load(self.files[self.position], weights_only=True)
        self.position = (self.position + self.stride) % len(self.files)
        return data["image"].to(self.device), data["label"].long().to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
