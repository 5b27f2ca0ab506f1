"""RaSD trainers in-process on a tiny synthetic dataset: weights, adaptation, bad input, resuming.

The dataset is planned and preprocessed once by nnU-Net's own command; the trainers are then built
the way ``nnUNetv2_train`` builds them (plans + dataset.json + device), without subprocesses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nnunet_plugin import trainers as T
from nnunet_plugin.datasets import build_synthetic_dataset
from nnunet_plugin.errors import PatchTooSmallError, WeightsDimensionError
from nnunet_plugin.testing import nnunet_environment, plan_and_preprocess, save_random_weights
from rasd_hub.errors import ChecksumMismatchError, WeightsFormatError, WeightsNotAvailableError

DATASET_ID = 991
HEAD = "model.2"  # rasd2d_small's head prefix (rasd_config["head"])


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_environment(root)
    build_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, num_cases=5, shape=(64, 64), num_test=0)
    plan_and_preprocess(DATASET_ID, env, verify=False)
    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})  # nnunetv2.paths reads these lazily
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return save_random_weights("rasd2d_small", tmp_path_factory.mktemp("w") / "rasd2d_small", seed=0)


@pytest.fixture
def use_weights(monkeypatch):
    def use(path):
        if path is None:
            monkeypatch.delenv("RASD_WEIGHTS", raising=False)
        else:
            monkeypatch.setenv("RASD_WEIGHTS", str(path))
    return use


def plans_and_dataset(root: Path, continue_training: bool = False):
    folder = root / "preprocessed" / f"Dataset{DATASET_ID:03d}_SyntheticDisks"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = continue_training
    return plans, json.loads((folder / "dataset.json").read_text())


def make_trainer(cls, root, plans=None, dataset_json=None, configuration="2d", fold=0):
    p, d = plans_and_dataset(root)
    return cls(plans=plans or p, configuration=configuration, fold=fold,
               dataset_json=dataset_json or d, device=torch.device("cpu"))


def log_text(trainer) -> str:
    return Path(trainer.log_file).read_text()


# ------------------------------------------------------------------ weights


def test_pretrained_encoder_equals_weights_after_init_and_head_is_new(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    trainer = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs)
    trainer.initialize()
    pretrained = load_file(str(weights_dir / "model.safetensors"))
    state = trainer.network.net.state_dict()
    body = [k for k in pretrained if not k.startswith(HEAD + ".")]
    head = [k for k in pretrained if k.startswith(HEAD + ".")]
    assert body and head
    for k in body:  # encoder and decoder, stem included (1 channel)
        assert torch.equal(state[k], pretrained[k]), k
    # the head is new: 2 classes instead of the 32-channel pre-training embedding
    assert any(state[k].shape != pretrained[k].shape or not torch.equal(state[k], pretrained[k])
               for k in head if "weight" in k)
    log = log_text(trainer)
    sha = hashlib.sha256((weights_dir / "model.safetensors").read_bytes()).hexdigest()
    assert f"RaSD: loaded {weights_dir} sha256 {sha}" in log


def test_fine_tuning_optimiser_and_single_output(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    trainer.initialize()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 1e-5
    assert trainer.initial_lr == 3e-4
    assert trainer.enable_deep_supervision is False
    trainer.set_deep_supervision_enabled(True)  # must be a harmless no-op
    out = trainer.network(torch.randn(1, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 64, 64)


def test_from_scratch_twin_has_identical_architecture_and_random_weights(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    pre = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    use_weights(None)  # the baseline needs no weights at all
    scratch = make_trainer(T.RaSDTrainerSmallFromScratch, nnunet_dirs)
    pre_arch = pre.configuration_manager.network_arch_init_kwargs
    scratch_arch = scratch.configuration_manager.network_arch_init_kwargs
    for key in ("rasd_architecture", "rasd_model_args", "input_scale", "input_shift"):
        assert pre_arch[key] == scratch_arch[key], key
    assert scratch_arch["pretrained_weights"] is None
    scratch.initialize()
    pretrained = load_file(str(weights_dir / "model.safetensors"))
    stem = "model.0.conv.unit0.conv.weight"
    assert not torch.equal(scratch.network.net.state_dict()[stem], pretrained[stem])
    assert type(scratch.optimizer) is torch.optim.AdamW  # same schedule and optimiser


def test_architecture_follows_the_weights_config(nnunet_dirs, weights_dir, use_weights):
    # RaSDTrainer's default is rasd2d; RASD_WEIGHTS naming rasd2d_small weights trains rasd2d_small.
    use_weights(weights_dir)
    trainer = make_trainer(T.RaSDTrainerFromScratch, nnunet_dirs)
    assert trainer.configuration_manager.network_arch_init_kwargs["rasd_architecture"] == "rasd2d_small"


# ------------------------------------------------------------------ bad input, before training


def test_no_published_weights_fails_with_how_to_get_them(nnunet_dirs, use_weights):
    use_weights(None)
    with pytest.raises(WeightsNotAvailableError) as err:
        make_trainer(T.RaSDTrainer, nnunet_dirs)
    text = str(err.value) + "".join(getattr(err.value, "__notes__", []))
    assert "rasd hub convert" in text and "RASD_WEIGHTS" in text


def test_missing_weights_folder(nnunet_dirs, tmp_path, use_weights):
    use_weights(tmp_path / "no-such-weights")
    with pytest.raises(WeightsFormatError, match="no such folder"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs)


def test_corrupted_weights_file(nnunet_dirs, weights_dir, tmp_path, use_weights):
    broken = Path(shutil.copytree(weights_dir, tmp_path / "broken"))
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-100:] = bytes(100)  # flip the last tensor bytes
    (broken / "model.safetensors").write_bytes(bytes(data))
    use_weights(broken)
    with pytest.raises(ChecksumMismatchError, match="download or export it again"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs)


def test_folder_without_config(nnunet_dirs, weights_dir, tmp_path, use_weights):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(weights_dir / "model.safetensors", bare)
    use_weights(bare)
    with pytest.raises(WeightsFormatError):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs)


def _with_fake_3d_configuration(root):
    plans, dataset_json = plans_and_dataset(root)
    cfg3d = copy.deepcopy(plans["configurations"]["2d"])
    cfg3d.update(patch_size=[32, 64, 64], spacing=[1.0, 1.0, 1.0], data_identifier="nnUNetPlans_3d_fake",
                 median_image_size_in_voxels=[32, 64, 64])
    plans["configurations"]["3d_fake"] = cfg3d
    return plans, dataset_json


def test_2d_weights_for_a_3d_configuration(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    plans, dataset_json = _with_fake_3d_configuration(nnunet_dirs)
    with pytest.raises(WeightsDimensionError, match="2D network .* '3d_fake' is 3D"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans, dataset_json, configuration="3d_fake")


def test_3d_weights_for_a_2d_configuration(nnunet_dirs, tmp_path, use_weights):
    use_weights(save_random_weights("rasd3d_small", tmp_path / "w3d"))
    with pytest.raises(WeightsDimensionError, match="3D network"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs)


def test_3d_configuration_builds_the_3d_small_network(nnunet_dirs, use_weights):
    use_weights(None)
    plans, dataset_json = _with_fake_3d_configuration(nnunet_dirs)
    trainer = make_trainer(T.RaSDTrainerSmallFromScratch, nnunet_dirs, plans, dataset_json,
                           configuration="3d_fake")
    assert trainer.configuration_manager.network_arch_init_kwargs["rasd_architecture"] == "rasd3d_small"


# ------------------------------------------------------------------ adaptation


def test_patch_rounded_and_logged(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    plans, dataset_json = plans_and_dataset(nnunet_dirs)
    plans["configurations"]["2d"]["patch_size"] = [40, 56]
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans, dataset_json)
    assert trainer.configuration_manager.patch_size == [48, 64]
    assert "patch size [40, 56] -> [48, 64]" in log_text(trainer)


def test_patch_too_small_is_refused(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    plans, dataset_json = plans_and_dataset(nnunet_dirs)
    plans["configurations"]["2d"]["patch_size"] = [24, 64]
    with pytest.raises(PatchTooSmallError, match="at least 32"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans, dataset_json)


def test_two_channel_dataset_adapts_the_stem(nnunet_dirs, weights_dir, use_weights):
    from rasd_hub.weights import adapt_in_chans

    use_weights(weights_dir)
    plans, dataset_json = plans_and_dataset(nnunet_dirs)
    dataset_json["channel_names"] = {"0": "T1", "1": "T2"}
    plans["configurations"]["2d"]["normalization_schemes"] = ["ZScoreNormalization"] * 2
    plans["configurations"]["2d"]["use_mask_for_norm"] = [False] * 2
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans, dataset_json)
    trainer.initialize()
    stem = "model.0.conv.unit0.conv.weight"
    pretrained = load_file(str(weights_dir / "model.safetensors"))[stem]
    adapted = trainer.network.net.state_dict()[stem]
    assert adapted.shape[1] == 2 and pretrained.shape[1] == 1
    assert torch.equal(adapted, adapt_in_chans(pretrained, 2))
    assert trainer.network(torch.randn(1, 2, 64, 64)).shape == (1, 2, 64, 64)
    log = log_text(trainer)
    assert "2 input channels" in log and "intensity channel 1" in log


def test_normalisation_comparison_is_logged_and_applied(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    log = log_text(trainer)
    config = json.loads((weights_dir / "config.json").read_text())
    assert config["normalization"]["method"] == "minmax"  # what rasd_hub states today
    assert "intensity channel 0: MISMATCH explained" in log
    kwargs = trainer.configuration_manager.network_arch_init_kwargs
    assert (kwargs["input_scale"], kwargs["input_shift"]) == ([0.25], [0.5])


# ------------------------------------------------------------------ inference and resuming


def test_inference_network_builds_from_plans_alone(nnunet_dirs, weights_dir, tmp_path, use_weights):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    moved = Path(shutil.copytree(weights_dir, tmp_path / "w"))
    use_weights(moved)
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    trainer.initialize()
    shutil.rmtree(moved)
    use_weights(None)
    manager = PlansManager(trainer.plans_manager.plans)  # what plans.json in the results holds
    net = T.RaSDTrainerSmall.build_network_architecture(
        manager, manager.get_configuration("2d"), 1, 2, enable_deep_supervision=False)
    net.load_state_dict(trainer.network.state_dict(), strict=True)  # what the predictor does
    x = torch.randn(1, 1, 64, 64)
    trainer.network.eval()
    net.eval()
    assert torch.allclose(net(x), trainer.network(x))


def test_resuming_keeps_trained_weights_and_never_reloads_rasd_weights(nnunet_dirs, weights_dir, use_weights):
    use_weights(weights_dir)
    first = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs, fold=1)
    first.run_training()
    checkpoint = Path(first.output_folder) / "checkpoint_final.pth"
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]

    # --c: RASD_WEIGHTS now points nowhere; resuming must neither need nor load it
    use_weights("/definitely/not/there")
    plans, dataset_json = plans_and_dataset(nnunet_dirs, continue_training=True)
    resumed = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs, plans, dataset_json, fold=1)
    resumed.load_checkpoint(str(checkpoint))  # what nnUNetv2_train --c does
    state = resumed.network.state_dict()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    pretrained = load_file(str(weights_dir / "model.safetensors"))
    stem = "model.0.conv.unit0.conv.weight"
    assert not torch.equal(state["net." + stem], pretrained[stem])  # trained, not re-loaded
    assert resumed.current_epoch == 2
    assert "resuming (--c)" in log_text(resumed)
