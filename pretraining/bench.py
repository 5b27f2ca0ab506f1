"""``rasd bench train``: pre-training throughput of our recipe and of the released code's recipe.

Both recipes run the same :class:`~pretraining.runner.Trainer` step (same model, input size, batch
and PDL loss) on the same device in one process; they differ only where the released code does:

* ``rasd-hub``: a fresh synthetic batch every step (synthesised on the training device), bf16
  autocast on CUDA (fp32 on CPU unless ``--precision bf16``), no gradient checkpointing.
* ``offline`` (paper Table 1): the same step, but batches are read from a pool pre-generated to
  disk first (one batch per timed step, so nothing is re-used); reports the preparation time and
  the storage the pool takes, which online synthesis avoids.
* ``released``: fp32, gradient checkpointing on, and a FIFO batch queue into which only
  ``max(1, B // 10)`` newly synthesised samples enter per step (one for every preset here).
  The synthesis itself is ours on the same device (the release generates on the CPU, ~2.4 s per
  128^3 sample), so the comparison isolates the training recipe.

Each step is timed as synthesis (drawing the batch) plus training; on CUDA both are synchronised so
that the synthesis share is real device time, not launch time.
"""

from __future__ import annotations

import datetime as _dt
import platform
import tempfile
import time
from collections import deque
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pretraining.config import TrainConfig
from pretraining.distributed import DistContext, resolve_device
from pretraining.runner import Trainer
from pretraining.sources import OfflinePool, online_source, prepare_pool

__all__ = ["BenchSettings", "BenchResult", "run_bench", "format_results", "ReleasedQueue",
           "cpu_model"]


@dataclass(frozen=True)
class BenchSettings:
    """What to measure; None fields take the preset's value."""

    preset: str = "rasd2d_small"
    steps: int = 20
    warmup: int = 3
    batch_size: int | None = None
    size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    grad_checkpointing: bool = False
    compile: bool = False


@dataclass
class BenchResult:
    recipe: str
    preset: str
    architecture: str
    device: str
    size: list[int]
    batch_size: int
    precision: str
    grad_checkpointing: bool
    new_samples_per_step: int
    steps: int
    seconds: float
    steps_per_s: float
    samples_per_s: float
    synthesis_share: float
    peak_memory_mb: float
    peak_memory_kind: str
    date: str
    pool_seconds: float | None = None
    """offline recipe: time to pre-generate the pool (one batch per step run) before training"""
    pool_bytes: int | None = None
    pool_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReleasedQueue:
    """The released code's data feeding: a FIFO of ``batch`` samples, ``new_per_step`` of which
    are replaced per step, so each sample is trained on ``batch / new_per_step`` times."""

    def __init__(self, stream, batch: int, new_per_step: int):
        self.stream = stream
        self.new_per_step = new_per_step
        self.images: deque = deque(maxlen=batch)
        self.labels: deque = deque(maxlen=batch)
        while len(self.images) < batch:
            self._draw()

    def _draw(self) -> None:
        image, label = next(self.stream)
        self.images.extend(image.unbind(0))
        self.labels.extend(label.unbind(0))

    def __iter__(self):
        return self

    def __next__(self):
        self._draw()
        return torch.stack(list(self.images)), torch.stack(list(self.labels))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    import resource

    # ru_maxrss is in KiB on Linux; it is the process's peak so far, across recipes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({torch.get_num_threads()} threads)"


class _RecipeRun:
    """One recipe's trainer and its accumulated timings."""

    def __init__(self, settings: BenchSettings, recipe: str, source_factory, workdir: Path):
        self.settings, self.recipe = settings, recipe
        released = recipe == "released"
        self.device = device = resolve_device(settings.device)
        self.config = config = TrainConfig.from_preset(
            settings.preset, batch_size=settings.batch_size, size=settings.size,
            device=str(device), out_dir=str(workdir / recipe),
            steps=settings.steps + settings.warmup + 1,
            precision="fp32" if released else settings.precision,
            grad_checkpointing=True if released else settings.grad_checkpointing,
            compile=settings.compile, preview=False, export=False,
        )
        self.batch = batch = config.batch_per_rank(1)
        self.new_per_step = max(1, batch // 10) if released else batch
        self.pool = None

        def build_source(cfg, rank, b, dev):
            if recipe == "offline":
                pool_dir = workdir / "offline_pool"
                self.pool = prepare_pool(source_factory(cfg, rank, b, dev), pool_dir,
                                         settings.steps + settings.warmup + 1)
                return OfflinePool(pool_dir, dev)
            if not released:
                return source_factory(cfg, rank, b, dev)
            return ReleasedQueue(source_factory(cfg, rank, self.new_per_step, dev), b,
                                 self.new_per_step)

        self.trainer = Trainer(config, DistContext(device=device), build_source=build_source,
                               progress=False)
        self.synth = self.total = 0.0
        self.peak_mb, self.peak_kind = 0.0, ""

    def step(self) -> tuple[float, float]:
        """One step: (synthesis seconds, total seconds), device-synchronised."""
        _sync(self.device)
        t0 = time.perf_counter()
        image, label = next(self.trainer.source)
        _sync(self.device)
        t1 = time.perf_counter()
        self.trainer.train_step(image, label)
        _sync(self.device)
        return t1 - t0, time.perf_counter() - t0

    def measure_peak(self) -> None:
        """CUDA: memory a step needs above what is resident before it (this recipe's activations
        and temporaries); CPU: the process's peak RSS (shared by all recipes)."""
        if self.device.type == "cuda":
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            peak = torch.cuda.max_memory_allocated(self.device) - base
            self.peak_mb, self.peak_kind = peak / 2**20, "CUDA peak above resident weights"
        else:
            self.step()
            self.peak_mb, self.peak_kind = _peak_memory(self.device)

    def result(self) -> BenchResult:
        s, c = self.settings, self.config
        return BenchResult(
            recipe=self.recipe, preset=c.preset, architecture=c.architecture,
            device=_device_label(self.device), size=list(c.spatial_shape()),
            batch_size=self.batch, precision="bf16" if self.trainer.use_bf16 else "fp32",
            grad_checkpointing=c.grad_checkpointing, new_samples_per_step=self.new_per_step,
            steps=s.steps, seconds=round(self.total, 3),
            steps_per_s=round(s.steps / self.total, 4),
            samples_per_s=round(s.steps * self.batch / self.total, 3),
            synthesis_share=round(self.synth / self.total, 4),
            peak_memory_mb=round(self.peak_mb, 1), peak_memory_kind=self.peak_kind,
            pool_seconds=round(self.pool.seconds, 3) if self.pool else None,
            pool_bytes=self.pool.bytes if self.pool else None,
            pool_samples=self.pool.samples if self.pool else None,
            date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )


def run_bench(settings: BenchSettings, recipes: list[str] = ("rasd-hub",),
              source_factory=online_source) -> list[BenchResult]:
    """Measure the recipes side by side in this process on the same device. Timed steps are
    interleaved (one step of each recipe in turn), so that load from other processes on a shared
    machine affects every recipe alike. ``source_factory`` (``(config, rank, batch, device) ->
    batch source``) defaults to online synthesis."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_RecipeRun(settings, r, source_factory, Path(tmp)) for r in recipes]
        for run in runs:
            for _ in range(settings.warmup):
                run.step()
            run.measure_peak()
        for _ in range(settings.steps):
            for run in runs:
                synth, total = run.step()
                run.synth += synth
                run.total += total
        return [run.result() for run in runs]


def format_results(results: list[BenchResult]) -> str:
    header = ("recipe", "steps/s", "samples/s", "synthesis", "peak MB", "precision", "grad ckpt",
              "new/step")
    rows = [header]
    for r in results:
        rows.append((r.recipe, f"{r.steps_per_s:.3f}", f"{r.samples_per_s:.2f}",
                     f"{100 * r.synthesis_share:.1f}%", f"{r.peak_memory_mb:.0f}", r.precision,
                     "on" if r.grad_checkpointing else "off", str(r.new_samples_per_step)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    r0 = results[0]
    lines.append(f"preset {r0.preset} ({r0.architecture}), size {'x'.join(map(str, r0.size))}, "
                 f"batch {r0.batch_size}, {r0.steps} timed steps, device {r0.device}, {r0.date}; "
                 f"peak memory = {r0.peak_memory_kind}")
    by_recipe = {r.recipe: r for r in results}
    if "offline" in by_recipe:
        off = by_recipe["offline"]
        per_1000 = off.pool_bytes / 2**30 / off.pool_samples * 1000
        lines.append(f"offline pool: {off.pool_samples} samples took {off.pool_seconds:.1f} s to "
                     f"prepare and {off.pool_bytes / 2**20:.1f} MiB on disk ({per_1000:.2f} GiB "
                     "per 1000 samples); online synthesis needs neither")
    if {"rasd-hub", "released"} <= set(by_recipe):
        ratio = by_recipe["rasd-hub"].samples_per_s / by_recipe["released"].samples_per_s
        lines.append(f"training throughput, rasd-hub / released recipe: {ratio:.2f}x "
                     "(samples/s; the released recipe re-uses queued samples, counted as trained)")
    return "\n".join(lines)
