"""`rasd bench train` mechanics with the stand-in batch source of test_runner (no timing claims)."""

import pytest
import torch

from pretraining.bench import BenchSettings, ReleasedQueue, format_results, run_bench
from pretraining.config import TrainConfig
from test_runner import TinyStream


def tiny_source(config, rank, batch, device):
    return TinyStream(config, rank, batch, device)


def test_released_queue_replaces_one_sample_per_step():
    config = TrainConfig.from_preset("rasd2d_small", size=16)
    queue = ReleasedQueue(TinyStream(config, 0, 1, "cpu"), batch=4, new_per_step=1)
    first, _ = next(queue)
    second, _ = next(queue)
    assert first.shape == second.shape == (4, 1, 16, 16)
    assert torch.equal(first[1:], second[:-1])  # FIFO: three of four samples are re-used
    assert not torch.equal(first[-1], second[-1])


def test_bench_measures_both_recipes_side_by_side():
    settings = BenchSettings(preset="rasd2d_small", steps=1, warmup=0, size=32, device="cpu",
                             batch_size=2)
    ours, released, offline = run_bench(settings, ["rasd-hub", "released", "offline"],
                                        source_factory=tiny_source)
    assert (ours.precision, ours.grad_checkpointing, ours.new_samples_per_step) == ("fp32", False, 2)
    assert (released.precision, released.grad_checkpointing,
            released.new_samples_per_step) == ("fp32", True, 1)
    for r in (ours, released):
        assert r.steps_per_s > 0 and 0 < r.synthesis_share < 1 and r.peak_memory_mb > 0
        assert r.samples_per_s == pytest.approx(2 * r.steps_per_s, rel=1e-3)
    assert offline.pool_samples == (1 + 0 + 1) * 2 and offline.pool_bytes > 0 and ours.pool_bytes is None
    table = format_results([ours, released, offline])
    assert "rasd-hub / released recipe" in table and "CPU" in table
    assert "offline pool: 4 samples" in table
