"""The pre-training runner with a tiny stand-in model and batch source (defined here, tests only):
checkpoints, exact resume, signals, NaN handling, metrics, previews and bad input."""

import json
from pathlib import Path
import os
import signal

import pytest
import torch
from torch import nn

from pretraining.checkpoint import CheckpointUnreadableError, list_checkpoints, load_checkpoint
from pretraining.config import TrainConfig
from pretraining.pdl import PDLConfig
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
    start_preview = (tmp_path / "b" / "preview_start.png").read_bytes()
    resumed = run(make_config(tmp_path / "b", resume=True))
    # the start preview shows step 0; a resumed launch leaves it alone
    assert (tmp_path / "b" / "preview_start.png").read_bytes() == start_preview
    assert resumed.previews == [tmp_path / "b" / "preview_end.png"]
    assert resumed.resumed_from == 3 and resumed.step == 6
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    # metrics: one line per step, no duplicates after the resume, same losses as the straight run
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    resumes = [r for r in b if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [3] and resumes[0]["checkpoint"].endswith("step_0000003.pt")
    b = [r for r in b if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["loss"] < a[0]["loss"]
    assert {"loss", "separation", "clustering", "lr", "steps_per_s"} <= set(a[0])
    assert (tmp_path / "a" / "preview_start.png").read_bytes() == start_preview
    assert (tmp_path / "a" / "preview_start.png").stat().st_size > 0
    assert (tmp_path / "a" / "preview_end.png").stat().st_size > 0


def test_resume_is_exact_without_resume_when_steps_already_done(tmp_path):
    run(make_config(tmp_path, steps=3))
    again = run(make_config(tmp_path, steps=3, resume=True))
    assert again.step == 3 and again.resumed_from == 3


def test_checkpoint_contract(tmp_path):
    config = make_config(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2)
    run(config)
    found = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in found] == [4, 3]  # older ones pruned after the newer ones were written
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"]
    state = torch.load(found[0][1], weights_only=True)
    assert {"model", "model_config", "provenance", "optimizer", "scheduler", "rng", "step",
            "run_config"} <= set(state)
    assert state["model_config"]["architecture"] == "tiny_test_net"
    prov = state["provenance"]
    from pretraining.synthesis import SynthesisConfig

    # the provenance regenerates the exact synthesis config (every range, not only the preset)
    assert SynthesisConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in prov["synthesis_config"].items()}) == config.synthesis_config()
    assert prov["preset"] == "rasd2d_small" and prov["step"] == 4 and prov["seed"] == 0
    assert prov["batch_size"] == 8 and prov["device"] == "cpu"
    rng = state["rng"]["ranks"][0]
    assert {"torch", "python", "stream"} <= set(rng)
    json.dumps(state["run_config"])  # plain values only


def test_truncated_newest_checkpoint_is_set_aside_and_resume_is_exact(tmp_path):
    run(make_config(tmp_path / "a"))
    run(make_config(tmp_path / "b", steps=5, checkpoint_every=2))  # checkpoints 2, 4, 5
    newest = list_checkpoints(tmp_path / "b" / "checkpoints")[0][1]
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = run(make_config(tmp_path / "b", resume=True))
    assert resumed.resumed_from == 4
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    kept = tmp_path / "b" / "checkpoints" / "step_0000005.pt.unreadable"
    assert kept.stat().st_size == 1000  # kept for inspection, no longer a checkpoint name
    events = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r.get("event")]
    assert {"event": "unreadable_checkpoint", "file": kept.name, "step": 4} in events


def _garbage(path, step):
    (path / f"step_{step:07d}.pt").write_bytes(b"not a checkpoint")


def test_resume_refuses_when_no_checkpoint_loads_and_changes_nothing(tmp_path):
    run(make_config(tmp_path, steps=4, checkpoint_every=2))
    metrics_before = (tmp_path / "metrics.jsonl").read_bytes()
    for step, path in list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(path.read_bytes()[:500])  # truncated
    _garbage(tmp_path / "checkpoints", 7)
    files_before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(CheckpointUnreadableError) as err:
        run(make_config(tmp_path, steps=6, resume=True))
    message = str(err.value)
    assert "step_0000007.pt" in message and "step_0000002.pt" in message and "mv " in message
    assert "none of the 3 checkpoints" in message
    # no silent restart: metrics and checkpoint files are exactly as they were
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics_before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == files_before


def test_resume_in_a_folder_without_checkpoints_is_a_fresh_start(tmp_path):
    fresh = run(make_config(tmp_path / "a", steps=3, resume=True))
    assert fresh.resumed_from is None and fresh.step == 3
    plain = run(make_config(tmp_path / "b", steps=3))
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    """Three unreadable high-step files used to outrank every new checkpoint, so keep=2 deleted
    each one right after writing it."""
    run(make_config(tmp_path / "a"))
    run(make_config(tmp_path / "b", steps=2, checkpoint_every=2, keep_checkpoints=2))
    for step in (10, 11, 12):
        _garbage(tmp_path / "b" / "checkpoints", step)
    resumed = run(make_config(tmp_path / "b", checkpoint_every=2, keep_checkpoints=2, resume=True))
    assert resumed.resumed_from == 2
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [6, 4]
    assert_same_training_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def test_resume_prunes_what_a_killed_run_did_not(tmp_path):
    """Killed after a checkpoint's rename but before pruning: the resumed run prunes."""
    from pretraining.checkpoint import save_checkpoint

    run(make_config(tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=2))
    state = final_state(tmp_path)
    save_checkpoint(dict(state, step=2), tmp_path / "checkpoints", 2, keep=0)  # not pruned
    run(make_config(tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=2, resume=True))
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [6, 4]


def test_pruning_keeps_newer_files_and_the_new_one(tmp_path):
    from pretraining.checkpoint import save_checkpoint

    _garbage(tmp_path, 9)
    for step in (1, 2, 3):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 3, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stale_temporary_checkpoint_files_are_removed_on_resume(tmp_path):
    run(make_config(tmp_path, steps=2, checkpoint_every=2))
    stale = [tmp_path / "checkpoints" / ".step_0000004.pt.1234.tmp",  # the writer before rasd_hub._io
             tmp_path / "checkpoints" / ".tmp-abcd1234-step_0000004.pt"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / ".tmp-abcd1234-export").mkdir()  # a killed export's staging folder
    run(make_config(tmp_path, steps=3, resume=True))
    assert not [p for p in stale if p.exists()] and not (tmp_path / ".tmp-abcd1234-export").exists()


def test_resume_with_a_new_lr_and_weight_decay_trains_with_the_new_values(tmp_path, capsys):
    run(make_config(tmp_path, steps=3, lr=1e-2))
    config = make_config(tmp_path, steps=6, lr=4e-3, weight_decay=0.05, resume=True)
    run(config)
    state = final_state(tmp_path)
    groups = state["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == 4e-3 and groups[0]["weight_decay"] == 0.05
    assert state["scheduler"]["base_lrs"] == [4e-3]
    logged = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if "lr" in r
              and not r.get("event")}
    assert logged[2] == pytest.approx(1e-2 * lr_factor(2, config))  # first launch: old lr
    for step in (4, 5, 6):  # the lr a step-4..6 optimiser step used, logged after the step
        assert logged[step] == pytest.approx(4e-3 * lr_factor(step, config))
    assert "lr 0.01 -> 0.004" in capsys.readouterr().err
    event = [r for r in read_metrics(tmp_path / "metrics.jsonl")
             if r.get("event") == "optimizer_settings_changed"][0]
    assert event["step"] == 3 and event["lr"] == [1e-2, 4e-3] and event["weight_decay"] == [0.01, 0.05]


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
    # another synthesis or PDL loss is another run too
    with pytest.raises(ResumeMismatchError, match="synthesis"):
        run(make_config(tmp_path, synthesis="paper", resume=True))
    with pytest.raises(ResumeMismatchError, match="pdl"):
        run(make_config(tmp_path, pdl=PDLConfig(normalize=True), resume=True))
    with pytest.raises(ResumeMismatchError, match="synthesis_kwargs"):
        run(make_config(tmp_path, synthesis_kwargs={"zscore": True}, resume=True))


def test_checkpoints_from_before_synthesis_kwargs_still_resume(tmp_path):
    run(make_config(tmp_path, steps=2, checkpoint_every=2))
    path = list_checkpoints(tmp_path / "checkpoints")[-1][1]
    state = torch.load(path, weights_only=False)
    del state["run_config"]["synthesis_kwargs"]  # what a checkpoint of an older version holds
    torch.save(state, path)
    assert run(make_config(tmp_path, steps=3, resume=True)).resumed_from == 2


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
    # a pool of other settings is never reused (it would train on the wrong data)
    other = make_config(tmp_path / "out2", steps=5, offline_pool=str(tmp_path / "pool"),
                        offline_pool_batches=2, preview=False, num_classes=4)
    with pytest.raises(PretrainingError, match="num_classes: pool 6 vs this run 4"):
        run(other)
    (tmp_path / "old_pool").mkdir()  # a pool without pool.json (written before it existed)
    (tmp_path / "pool" / "batch_00000.pt").rename(tmp_path / "old_pool" / "batch_00000.pt")
    with pytest.raises(PretrainingError, match="no readable pool.json"):
        run(make_config(tmp_path / "out3", steps=5, offline_pool=str(tmp_path / "old_pool"),
                        offline_pool_batches=2, preview=False))


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
    from pretraining.sources import online_source
    from pretraining.synthesis import synthesize

    config = make_config(tmp_path, size=32, steps=1, export=True, preview=False)
    run_pretraining(config, build_source=online_source, progress=False)
    norm = json.loads((tmp_path / "export" / "config.json").read_text())["normalization"]
    assert norm["method"] == "minmax"
    # independent estimate from a fresh batch of the same preset: moments agree loosely
    image, _ = synthesize(config.synthesis_config(), 64, torch.Generator().manual_seed(123))
    assert abs(norm["mean"] - float(image.mean())) < 0.08
    assert abs(norm["std"] - float(image.std())) < 0.08
    assert 0.0 < norm["std"] < 0.5

    # z-scored synthetic images: the export says so, and fine-tuning's mapping is the identity
    zscored = make_config(tmp_path / "z", size=32, steps=1, export=True, preview=False,
                          synthesis_kwargs={"zscore": True})
    run_pretraining(zscored, build_source=online_source, progress=False)
    norm = json.loads((tmp_path / "z" / "export" / "config.json").read_text())["normalization"]
    assert norm["method"] == "zscore" and abs(norm["mean"]) < 1e-3 and abs(norm["std"] - 1) < 1e-3
    from nnunet_plugin.normalization import map_channel
    assert map_channel("ZScoreNormalization", norm).matched


def test_hub_export_of_the_final_checkpoint_equals_the_end_of_run_export(tmp_path):
    """`rasd hub export CHECKPOINT` (the route README gives for nnU-Net) and the runner's own
    export give the same folder, measured input moments included."""
    from pretraining.sources import online_source
    from rasd_hub.cli import main

    config = make_config(tmp_path / "run", size=32, steps=2, export=True, preview=False)
    result = run_pretraining(config, build_source=online_source, progress=False)
    assert main(["hub", "export", str(result.checkpoint), str(tmp_path / "by_cli")]) == 0
    ours = {p.name: p.read_bytes() for p in (tmp_path / "run" / "export").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (tmp_path / "by_cli").iterdir()}
    assert sorted(ours) == ["README.md", "config.json", "model.safetensors"]
    assert ours == theirs
    norm = json.loads(ours["config.json"])["normalization"]
    assert "mean" in norm and "std" in norm and norm["moments"].startswith("measured")


def test_the_v2_preset_is_the_recipe_its_shipped_weights_record():
    """rasd2d_small_v2 reproduces rasd2d_small.v2_synth10k_cpu: the command in its provenance."""
    import rasd_hub
    from rasd_hub.pretrained import get_pretrained_cfg

    v2 = TrainConfig.from_preset("rasd2d_small_v2")
    by_hand = TrainConfig.from_preset("rasd2d_small", steps=10_000, checkpoint_every=1000,
                                      synthesis="paper", pdl=PDLConfig(normalize=True))
    assert v2.to_dict() == dict(by_hand.to_dict(), preset="rasd2d_small_v2")
    weights = get_pretrained_cfg("rasd2d_small")  # the default tag
    assert weights.tag == "v2_synth10k_cpu" and weights.provenance["preset"] == "rasd2d_small_v2"
    config = json.loads((Path(rasd_hub.__file__).parent / weights.file / "config.json").read_text())
    recorded = config["provenance"]
    assert (recorded["synthesis"], recorded["pdl"]["normalize"], recorded["step"]) == ("paper", True, v2.steps)
