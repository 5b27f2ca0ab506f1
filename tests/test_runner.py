"""The pre-training runner with a tiny stand-in model and batch source (defined here, tests only):
checkpoints, exact resume, signals, NaN handling, metrics, previews and bad input."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from pretraining.checkpoint import list_checkpoints, load_checkpoint
from pretraining.config import TrainConfig
from pretraining.errors import (
    BatchSizeError,
    NonFiniteLossError,
    PretrainingError,
    ResumeMismatchError,
    TrainingInterrupted,
    UnknownPresetError,
)
from pretraining.metrics import read_metrics
from pretraining.runner import lr_factor, run_pretraining


class TinyNet(nn.Module):
    """Conv net with dropout, so that exact resume also needs the model's RNG state."""

    def __init__(self, dims=2, channels=8):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        drop = nn.Dropout2d if dims == 2 else nn.Dropout3d
        self.body = nn.Sequential(conv(1, channels, 3, padding=1), nn.ReLU(), drop(0.2),
                                  conv(channels, 6, 3, padding=1))
        self.rasd_config = {"architecture": "tiny_test_net", "model_args": {"dims": dims},
                            "spatial_dims": dims, "in_chans": 1, "out_channels": 6,
                            "input_divisor": 1, "head": "body.3"}

    def forward(self, x):
        return self.body(x)


class TinyStream:
    """Random blocky label maps and noisy images from a per-rank generator, with a state_dict.
    ``hooks`` maps a batch number (1-based) to a function applied to (image, label)."""

    def __init__(self, config, rank, batch, device, hooks=None):
        self.shape = (batch, *config.spatial_shape())
        self.num_classes = config.num_classes
        self.gen = torch.Generator().manual_seed(config.seed * 1000 + rank)
        self.count = 0
        self.hooks = hooks or {}

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        coarse = torch.randint(0, self.num_classes, (self.shape[0],) + tuple(s // 4 for s in self.shape[1:]),
                               generator=self.gen)
        label = coarse
        for dim in range(1, coarse.dim()):
            label = label.repeat_interleave(4, dim=dim)
        image = label.unsqueeze(1).float() / self.num_classes
        image = image + 0.1 * torch.randn(image.shape, generator=self.gen)
        if self.count in self.hooks:
            image, label = self.hooks[self.count](image, label)
        return image, label

    def state_dict(self):
        return {"generator": self.gen.get_state(), "count": self.count}

    def load_state_dict(self, state):
        self.gen.set_state(state["generator"])
        self.count = state["count"]


def tiny_model(config):
    return TinyNet(config.spatial_dims)


def source_with(hooks=None):
    return lambda config, rank, batch, device: TinyStream(config, rank, batch, device, hooks)


def make_config(out, **overrides):
    settings = dict(size=16, steps=6, checkpoint_every=3, log_every=1, out_dir=str(out),
                    export=False, device="cpu", lr=1e-2, keep_checkpoints=0)
    settings.update(overrides)
    return TrainConfig.from_preset(overrides.pop("preset", "rasd2d_small"), **settings)


def run(config, hooks=None):
    return run_pretraining(config, build_model=tiny_model, build_source=source_with(hooks),
                           progress=False)


def final_state(out):
    return load_checkpoint(list_checkpoints(out / "checkpoints")[0][1])


def assert_same_training_state(a, b):
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


def test_exact_resume_and_metrics(tmp_path):
    straight = run(make_config(tmp_path / "a"))
    assert straight.step == 6 and straight.resumed_from is None
    part = run(make_config(tmp_path / "b", steps=3))
    assert part.step == 3
    resumed = run(make_config(tmp_path / "b", resume=True))
    assert resumed.resumed_from == 3 and resumed.step == 6
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    # metrics: one line per step, no duplicates after the resume, same losses as the straight run
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["loss"] < a[0]["loss"]
    assert {"loss", "separation", "clustering", "lr", "steps_per_s"} <= set(a[0])
    # previews at start and end of each launch
    assert (tmp_path / "a" / "preview_start.png").stat().st_size > 0
    assert (tmp_path / "a" / "preview_end.png").stat().st_size > 0


def test_resume_is_exact_without_resume_when_steps_already_done(tmp_path):
    run(make_config(tmp_path, steps=3))
    again = run(make_config(tmp_path, steps=3, resume=True))
    assert again.step == 3 and again.resumed_from == 3


def test_checkpoint_contract(tmp_path):
    run(make_config(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2))
    found = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in found] == [4, 3]  # older ones pruned after the newer ones were written
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"]
    state = torch.load(found[0][1], weights_only=True)
    assert {"model", "model_config", "provenance", "optimizer", "scheduler", "rng", "step",
            "run_config"} <= set(state)
    assert state["model_config"]["architecture"] == "tiny_test_net"
    prov = state["provenance"]
    assert prov["preset"] == "rasd2d_small" and prov["step"] == 4 and prov["seed"] == 0
    assert prov["batch_size"] == 8 and prov["device"] == "cpu"
    rng = state["rng"]["ranks"][0]
    assert {"torch", "python", "stream"} <= set(rng)
    json.dumps(state["run_config"])  # plain values only


def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    run(make_config(tmp_path / "a"))
    run(make_config(tmp_path / "b", steps=5, checkpoint_every=2))  # checkpoints 2, 4, 5
    newest = list_checkpoints(tmp_path / "b" / "checkpoints")[0][1]
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        resumed = run(make_config(tmp_path / "b", resume=True))
    assert resumed.resumed_from == 4
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def test_sigterm_writes_checkpoint_then_resume_is_exact(tmp_path):
    run(make_config(tmp_path / "a"))

    def preempt(image, label):
        os.kill(os.getpid(), signal.SIGTERM)
        return image, label

    with pytest.raises(TrainingInterrupted) as info:
        run(make_config(tmp_path / "b"), hooks={2: preempt})
    assert info.value.step == 2 and info.value.checkpoint.endswith("step_0000002.pt")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
    run(make_config(tmp_path / "b", resume=True))
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def nan_image(image, label):
    return torch.full_like(image, float("nan")), label


def test_nan_steps_are_skipped_and_counted(tmp_path):
    result = run(make_config(tmp_path, steps=5), hooks={2: nan_image, 3: nan_image})
    assert result.nonfinite_steps == 2 and result.step == 5
    state = final_state(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["nonfinite_steps"] == 2


def test_too_many_nan_steps_stop_with_last_good_checkpoint(tmp_path):
    hooks = {i: nan_image for i in range(3, 20)}
    with pytest.raises(NonFiniteLossError, match="step_0000002.pt"):
        run(make_config(tmp_path, steps=10, checkpoint_every=2, max_nonfinite_steps=4), hooks)
    newest = list_checkpoints(tmp_path / "checkpoints")[0]
    assert newest[0] == 2
    state = load_checkpoint(newest[1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_refuses_another_presets_checkpoint(tmp_path):
    run(make_config(tmp_path, steps=2))
    with pytest.raises(ResumeMismatchError, match="preset"):
        run(make_config(tmp_path, preset="rasd3d_small", resume=True))
    with pytest.raises(ResumeMismatchError, match="num_classes"):
        run(make_config(tmp_path, num_classes=3, resume=True))


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    run(make_config(tmp_path, steps=1))
    with pytest.raises(PretrainingError, match="--resume"):
        run(make_config(tmp_path, steps=1))


def test_bad_input_errors():
    with pytest.raises(UnknownPresetError, match="rasd2d_small"):
        TrainConfig.from_preset("rasd4d")
    config = TrainConfig.from_preset("rasd2d_small", batch_size=6)
    assert config.batch_per_rank(2) == 3
    with pytest.raises(BatchSizeError, match="multiple of 4"):
        config.batch_per_rank(4)
    assert TrainConfig.from_preset("rasd3d_swinb").batch_per_rank(8) == 2  # per GPU by default
    with pytest.raises(ValueError):
        TrainConfig.from_preset("rasd2d_small", precision="fp16")


def test_bf16_autocast_path_runs_on_cpu(tmp_path):
    result = run(make_config(tmp_path, steps=3, precision="bf16", preview=False))
    assert result.final_loss is not None and result.nonfinite_steps == 0
    assert final_state(tmp_path)["provenance"]["precision"] == "bf16"


def test_offline_pool_is_generated_once_and_cycled(tmp_path):
    config = make_config(tmp_path / "out", steps=5, offline_pool=str(tmp_path / "pool"),
                         offline_pool_batches=2, preview=False)
    run(config)
    assert len(list((tmp_path / "pool").glob("batch_*.pt"))) == 2
    event = read_metrics(tmp_path / "out" / "metrics.jsonl")[0]
    assert event["event"] == "offline_pool" and event["samples"] == 16 and event["bytes"] > 0


def test_lr_schedule_warmup_then_cosine():
    config = TrainConfig.from_preset("rasd2d_small", steps=110, warmup_steps=10,
                                     schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(60, config) == pytest.approx(0.5)
    assert lr_factor(110, config) == pytest.approx(0.0)
    constant = TrainConfig.from_preset("rasd3d_swinb")
    assert lr_factor(12345, constant) == 1.0


def test_grad_checkpointing_with_a_hub_model_changes_nothing_but_memory(tmp_path):
    losses = {}
    for flag in (False, True):
        config = make_config(tmp_path / str(flag), steps=2, size=32, grad_checkpointing=flag,
                             preview=False)
        run_pretraining(config, build_source=source_with(), progress=False)  # rasd_hub model
        losses[flag] = [r["loss"] for r in read_metrics(tmp_path / str(flag) / "metrics.jsonl")]
    assert losses[True] == losses[False]


def test_size_must_fit_the_model(tmp_path):
    for size in (40, 16):  # not a multiple of 16; too small for the instance-norm bottleneck
        with pytest.raises(ValueError, match="multiples of 16 and at least 32"):
            run_pretraining(make_config(tmp_path, size=size), build_source=source_with(),
                            progress=False)


def test_exact_resume_with_the_real_synthesis_stream(tmp_path):
    from pretraining.sources import online_source

    def go(out, **kw):
        config = make_config(out, size=32, steps=4, checkpoint_every=2, preview=False,
                             batch_size=2, **kw)
        return run_pretraining(config, build_model=tiny_model, build_source=online_source,
                               progress=False)

    go(tmp_path / "a")
    go(tmp_path / "b")
    # resume from the step-2 checkpoint of run b, as if it had been preempted there
    (tmp_path / "b" / "checkpoints" / "step_0000004.pt").unlink()
    resumed = go(tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    assert final_state(tmp_path / "b")["rng"]["ranks"][0]["stream"]["step"] == 4


def test_export_states_the_measured_intensity_moments_of_the_synthetic_inputs(tmp_path):
    from pretraining.sources import online_source, synthesis_config
    from pretraining.synthesis import synthesize

    config = make_config(tmp_path, size=32, steps=1, export=True, preview=False)
    run_pretraining(config, build_source=online_source, progress=False)
    norm = json.loads((tmp_path / "export" / "config.json").read_text())["normalization"]
    assert norm["method"] == "minmax"
    # independent estimate from a fresh batch of the same preset: moments agree loosely
    image, _ = synthesize(synthesis_config(config), 64, torch.Generator().manual_seed(123))
    assert abs(norm["mean"] - float(image.mean())) < 0.08
    assert abs(norm["std"] - float(image.std())) < 0.08
    assert 0.0 < norm["std"] < 0.5
