"""RaSD plans and trainers in-process on a tiny synthetic dataset: planning, weights, twins, errors.

The dataset is planned and preprocessed once by nnU-Net's own command and RaSD-planned once with
the shipped ``rasd2d_small`` weights (they carry measured input moments, mean 0.465 / std
0.2405); the trainers are then built the way ``nnUNetv2_train`` builds them (plans + dataset.json
+ device), without subprocesses. nnU-Net's own commands are exercised in test_nnunet_cli.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nnunet_plugin import trainers as T
from nnunet_plugin.datasets import build_synthetic_dataset
from nnunet_plugin.errors import (
    PatchTooSmallError, PlansError, WeightsDimensionError,
    WeightsMismatchError,
)
from nnunet_plugin.planning import activation_bytes, estimate_batch_size, plan_dataset
from nnunet_plugin.commands import nnunet_environment, plan_and_preprocess, save_random_weights
from rasd_hub.errors import WeightsFormatError, WeightsNotAvailableError, WeightsNotFoundError

DATASET_ID = 991
DATASET = f"Dataset{DATASET_ID:03d}_SyntheticDisks"
HEAD = "head"  # the 1x1 class head rasd_hub puts on rasd2d_small's embedding (rasd_config["head"])
STEM = "model.0.conv.unit0.conv.weight"
SHIPPED_MOMENTS = (0.2405, 0.465)  # (std, mean) measured for rasd2d_small.v2_synth10k_cpu
OTHER_NORMALIZATION = {"method": "minmax", "range": [0.0, 1.0], "mean": 0.4, "std": 0.3}


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_environment(root)
    build_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, num_cases=5, shape=(64, 64), num_test=0)
    plan_and_preprocess(DATASET_ID, env, verify=False)
    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})  # nnunetv2.paths reads these lazily
    plan_dataset(DATASET_ID, "rasd2d_small")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """rasd2d_small weights with other measured moments (so another input mapping)."""
    return save_random_weights("rasd2d_small", tmp_path_factory.mktemp("w") / "other", seed=3,
                               normalization=OTHER_NORMALIZATION)


@pytest.fixture
def use_weights(monkeypatch):
    def use(path):
        if path is None:
            monkeypatch.delenv("RASD_WEIGHTS", raising=False)
        else:
            monkeypatch.setenv("RASD_WEIGHTS", str(path))
    use(None)
    return use


def preprocessed(root: Path) -> Path:
    return root / "preprocessed" / DATASET


def load_plans(root: Path, name: str = "RaSDPlans", continue_training: bool = False):
    plans = json.loads((preprocessed(root) / f"{name}.json").read_text())
    plans["continue_training"] = continue_training
    return plans, json.loads((preprocessed(root) / "dataset.json").read_text())


def make_trainer(cls, root, plans=None, fold=0, configuration="2d"):
    p, d = load_plans(root)
    return cls(plans=plans or p, configuration=configuration, fold=fold, dataset_json=d,
               device=torch.device("cpu"))


def log_text(trainer) -> str:
    return Path(trainer.log_file).read_text()


def shipped_state() -> dict:
    import rasd_hub

    folder = Path(rasd_hub.__file__).parent / "pretrained_weights" / "rasd2d_small.v2_synth10k_cpu"
    return load_file(str(folder / "model.safetensors"))


def mapping(network) -> tuple[float, float]:
    scale, shift = network.input_mapping()
    return round(scale[0], 4), round(shift[0], 4)


# ------------------------------------------------------------------ planning


def test_plans_are_written_beside_nnunets_which_stay_untouched(nnunet_dirs):
    folder = preprocessed(nnunet_dirs)
    before = (folder / "nnUNetPlans.json").read_bytes()
    result = plan_dataset(DATASET_ID, "rasd2d_small", plans_name="RaSDPlans_again")
    assert (folder / "nnUNetPlans.json").read_bytes() == before
    plans = json.loads(result.plans_file.read_text())
    source = json.loads(before)
    assert plans["plans_name"] == "RaSDPlans_again"
    assert plans["rasd"]["pretrained"]["source"] == "rasd2d_small.v2_synth10k_cpu"
    assert plans["rasd"]["pretrained"]["sha256"].startswith("8c8c32b4")
    cfg = plans["configurations"]["2d"]
    # same preprocessed data: nothing to write twice
    assert cfg["data_identifier"] == source["configurations"]["2d"]["data_identifier"]
    assert result.needs_preprocessing == []
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "nnunet_plugin.network.RaSDNetwork"
    assert arch["arch_kwargs"]["rasd_architecture"] == "rasd2d_small"
    assert (arch["arch_kwargs"]["input_scale"][0], arch["arch_kwargs"]["input_shift"][0]) == SHIPPED_MOMENTS
    rule = cfg["rasd"]["batch_size_rule"]
    assert rule["batch_size"] == cfg["batch_size"] >= 2 and rule["activation_bytes_per_sample"] > 0


def test_planning_rounds_the_patch_and_records_nnunets(nnunet_dirs):
    folder = preprocessed(nnunet_dirs)
    source = json.loads((folder / "nnUNetPlans.json").read_text())
    # what nnU-Net plans for smaller images: 3 poolings (patch multiple of 8), not 16 as rasd2d_small
    arch = source["configurations"]["2d"]["architecture"]["arch_kwargs"]
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        arch[key] = arch[key][:4]
    arch.update(n_stages=4, n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"][:3])
    source["configurations"]["2d"]["patch_size"] = [40, 56]
    (folder / "oddPlans.json").write_text(json.dumps(source))
    result = plan_dataset(DATASET_ID, "rasd2d_small", plans_name="RaSDPlans_odd", source_plans="oddPlans")
    summary = result.configurations["2d"]
    assert (summary["nnunet_patch_size"], summary["patch_size"]) == ([40, 56], [48, 64])
    source["configurations"]["2d"]["patch_size"] = [24, 64]
    (folder / "oddPlans.json").write_text(json.dumps(source))
    with pytest.raises(PatchTooSmallError, match="at least 32"):
        plan_dataset(DATASET_ID, "rasd2d_small", ["2d"], plans_name="RaSDPlans_odd", source_plans="oddPlans")


def test_planning_refuses_what_cannot_work(nnunet_dirs, tmp_path):
    with pytest.raises(WeightsDimensionError, match="3D network"):
        plan_dataset(DATASET_ID, "rasd3d_small", ["2d"], plans_name="RaSDPlans_x")
    with pytest.raises(PlansError, match="no configuration"):  # nothing fits by default either
        plan_dataset(DATASET_ID, "rasd3d_small", plans_name="RaSDPlans_x")
    with pytest.raises(WeightsNotAvailableError, match="rasd hub convert"):  # nothing published
        plan_dataset(DATASET_ID, "rasd2d", plans_name="RaSDPlans_x")
    with pytest.raises(WeightsNotFoundError, match="no such directory"):
        plan_dataset(DATASET_ID, str(tmp_path / "nowhere"), plans_name="RaSDPlans_x")
    with pytest.raises(PlansError, match="overwrite the source plans"):
        plan_dataset(DATASET_ID, "rasd2d_small", plans_name="nnUNetPlans")
    with pytest.raises(PlansError, match="nnUNetv2_plan_and_preprocess"):
        plan_dataset(DATASET_ID, "rasd2d_small", source_plans="noSuchPlans")
    weird = save_random_weights("rasd2d_small", tmp_path / "weird")
    config = json.loads((weird / "config.json").read_text())
    config["normalization"]["method"] = "histogram"  # no mapping exists for it: refused, not guessed
    (weird / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFormatError, match="'histogram' is unknown"):
        plan_dataset(DATASET_ID, str(weird), plans_name="RaSDPlans_x")
    assert not (preprocessed(nnunet_dirs) / "RaSDPlans_x.json").exists()


def test_activation_bytes_on_meta_equal_a_real_forward():
    import rasd_hub
    from torch.autograd.graph import saved_tensors_hooks

    net = rasd_hub.create_model("rasd2d_small", num_classes=3)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def real(shape):
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = \
                    t.numel() * t.element_size()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            out = net.train()(torch.zeros(shape))  # noqa: F841  (keeps the graph alive)
        return sum(seen.values())

    small = activation_bytes(copy.deepcopy(net), (1, 1, 64, 64))
    assert small == real((1, 1, 64, 64)) > 0
    # activations, unlike weights, grow with pixels and batch
    assert activation_bytes(copy.deepcopy(net), (1, 1, 128, 128)) == pytest.approx(4 * small, rel=0.02)
    assert activation_bytes(copy.deepcopy(net), (3, 1, 64, 64)) == pytest.approx(3 * small, rel=0.02)


def test_batch_rule_gives_nnunets_own_batch_for_nnunets_own_memory(monkeypatch):
    import rasd_hub

    from nnunet_plugin import planning

    a, b = rasd_hub.create_model("rasd2d_small", num_classes=2), rasd_hub.create_model("rasd2d", num_classes=2)
    kwargs = dict(nnunet_patch=(64, 64), patch=(64, 64), input_channels=1, dataset_voxels=1e9)
    same, rule = estimate_batch_size(nnunet_network=copy.deepcopy(a), nnunet_batch=12,
                                     network=copy.deepcopy(a), **kwargs)
    # the same network costs AdamW's 4 extra bytes per parameter, paid from the activations' share
    extra = 4 * rule["parameters"] / rule["activation_bytes_per_sample"]
    assert same == int(12 - extra) < 12
    monkeypatch.setattr(planning, "ADAMW_BYTES_PER_PARAM", planning.SGD_MOMENTUM_BYTES_PER_PARAM)
    same, _ = estimate_batch_size(nnunet_network=copy.deepcopy(a), nnunet_batch=12,
                                  network=copy.deepcopy(a), **kwargs)
    assert same == 12  # same network, same optimiser state: nnU-Net's own batch
    bigger, rule = estimate_batch_size(nnunet_network=copy.deepcopy(a), nnunet_batch=12,
                                       network=copy.deepcopy(b), **kwargs)
    assert bigger == 2 and "warning" in rule  # the 51M-parameter UNet does not fit: floor of 2
    capped, _ = estimate_batch_size(nnunet_network=copy.deepcopy(a), nnunet_batch=12,
                                    network=copy.deepcopy(a), **dict(kwargs, dataset_voxels=5 * 64 * 64 * 20))
    assert capped == 5  # nnU-Net's 5 % cap


# ------------------------------------------------------------------ trainers: weights


def test_trainer_refuses_plans_that_are_not_rasd_plans(nnunet_dirs):
    plans, _ = load_plans(nnunet_dirs, "nnUNetPlans")
    with pytest.raises(PlansError, match="rasd nnunet plan -d Dataset991"):
        make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans)


def test_pretrained_body_is_loaded_head_is_new_and_mapping_fits_the_weights(nnunet_dirs, use_weights):
    trainer = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs)
    trainer.initialize()
    weights = shipped_state()
    state = trainer.network.net.state_dict()
    # every pre-trained layer, the 32-channel embedding block included; only the 1x1 head is new
    assert weights and all(torch.equal(state[k], weights[k]) for k in weights)
    assert sorted(set(state) - set(weights)) == [HEAD + ".bias", HEAD + ".weight"]
    assert state[HEAD + ".weight"].shape[:2] == (2, 32)  # 2 classes from the 32-ch embedding
    assert mapping(trainer.network) == SHIPPED_MOMENTS
    assert trainer.network.pretrained["source"] == "rasd2d_small.v2_synth10k_cpu"
    log = log_text(trainer)
    assert "RaSD: loaded rasd2d_small.v2_synth10k_cpu sha256 8c8c32b4" in log
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.initial_lr == 1e-3
    assert trainer.enable_deep_supervision is False
    assert trainer.network(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_from_scratch_twin_trains_the_identical_plans(nnunet_dirs, use_weights):
    """The baseline differs only in not loading weights: same network, patch, batch and input
    mapping, which for weights with measured moments is not the range guess (0.25, 0.5)."""
    pre = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    scratch = make_trainer(T.RaSDTrainerSmallFromScratch, nnunet_dirs)
    for t in (pre, scratch):
        t.initialize()
    assert mapping(scratch.network) == mapping(pre.network) == SHIPPED_MOMENTS
    assert scratch.configuration_manager.configuration == pre.configuration_manager.configuration
    assert not torch.equal(scratch.network.net.state_dict()[STEM], shipped_state()[STEM])
    assert scratch.network.pretrained is None
    assert type(scratch.optimizer) is type(pre.optimizer) and scratch.initial_lr == pre.initial_lr


def test_seed_fixes_the_initial_weights(nnunet_dirs, use_weights, monkeypatch):
    def stem(seed):
        monkeypatch.setenv(T.SEED_VAR, str(seed))
        trainer = make_trainer(T.RaSDTrainerSmallFromScratch, nnunet_dirs)
        trainer.initialize()
        return trainer.network.net.state_dict()[STEM]

    assert torch.equal(stem(0), stem(0)) and not torch.equal(stem(0), stem(1))


def test_weights_changed_after_planning_are_refused(nnunet_dirs, use_weights):
    plans, _ = load_plans(nnunet_dirs)
    plans["rasd"]["pretrained"]["sha256"] = "0" * 64
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans)
    with pytest.raises(WeightsMismatchError, match="changed after planning"):
        trainer.initialize()


def test_missing_planned_weights_folder_is_one_clear_error(nnunet_dirs, use_weights, tmp_path, other_weights):
    moved = Path(shutil.copytree(other_weights, tmp_path / "moved"))
    plans, _ = load_plans(nnunet_dirs)
    plans["rasd"]["pretrained"]["source"] = str(moved)
    shutil.rmtree(moved)
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs, plans)
    with pytest.raises(WeightsNotFoundError, match="no such directory"):
        trainer.initialize()


def test_rasd_weights_replaces_the_plans_weights_and_is_recorded(nnunet_dirs, use_weights, other_weights):
    use_weights(other_weights)
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    trainer.initialize()
    state, other = trainer.network.net.state_dict(), load_file(str(other_weights / "model.safetensors"))
    assert torch.equal(state[STEM], other[STEM])
    assert trainer.network.pretrained["source"] == str(other_weights.resolve())
    assert mapping(trainer.network) == (0.3, 0.4)  # the mapping follows the weights used
    assert trainer.network.state_dict()["_extra_state"]["pretrained"]["source"] == str(other_weights.resolve())
    assert "(from RASD_WEIGHTS, replacing the plans' weights)" in log_text(trainer)


def test_rasd_weights_of_another_architecture_are_refused(nnunet_dirs, use_weights, tmp_path):
    use_weights(save_random_weights("rasd3d_small", tmp_path / "w3d"))
    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    with pytest.raises(WeightsMismatchError, match="--plans-name"):
        trainer.initialize()


# ------------------------------------------------------------------ checkpoints and inference


def test_restoring_a_checkpoint_needs_no_weights_and_keeps_the_folds_mapping(nnunet_dirs, use_weights,
                                                                           other_weights, tmp_path):
    use_weights(other_weights)
    first = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs, fold=1)
    first.initialize()
    checkpoint = tmp_path / "checkpoint.pth"
    first.save_checkpoint(str(checkpoint))
    saved = first.network.state_dict()

    use_weights("/definitely/not/there")  # --c / --val must neither need nor load weights
    plans, _ = load_plans(nnunet_dirs, continue_training=True)
    resumed = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs, plans, fold=1)
    resumed.load_checkpoint(str(checkpoint))
    state = resumed.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if isinstance(v, torch.Tensor))
    assert mapping(resumed.network) == (0.3, 0.4)  # the fold's own, not the plans' (shipped) one
    assert resumed.network.pretrained["source"] == str(other_weights.resolve())


def test_checkpoints_are_written_atomically(nnunet_dirs, use_weights, tmp_path, monkeypatch):
    trainer = make_trainer(T.RaSDTrainerSmall_2epochs_cpu, nnunet_dirs, fold=2)
    trainer.initialize()
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    good = path.read_bytes()

    def dies_mid_write(obj, f, *args, **kwargs):
        Path(f).write_bytes(good[:100])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_inference_builds_the_network_from_the_plans_alone(nnunet_dirs, use_weights):
    """nnU-Net's predictor calls the trainer's static builder with the saved plans, then loads
    each fold's weights: plain nnU-Net code, no RaSD override and no weights file."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer = make_trainer(T.RaSDTrainerSmall, nnunet_dirs)
    trainer.initialize()
    manager = PlansManager(trainer.plans_manager.plans)
    assert "build_network_architecture" not in vars(T.RaSDTrainer)
    net = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2,
                                                   enable_deep_supervision=False)
    net.load_state_dict(trainer.network.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(net.eval()(x), trainer.network.eval()(x))

    other = copy.deepcopy(manager.plans)
    other["configurations"]["2d"]["architecture"]["arch_kwargs"]["rasd_model_args"]["num_res_units"] = 1
    other_manager = PlansManager(other)
    mismatched = nnUNetTrainer.build_network_architecture(
        other_manager, other_manager.get_configuration("2d"), 1, 2, enable_deep_supervision=False)
    with pytest.raises(PlansError, match="trained with other plans"):
        mismatched.load_state_dict(trainer.network.state_dict(), strict=False)


# ------------------------------------------------------------------ nnU-Net's own network (ResEnc)


@pytest.fixture(scope="module")
def resenc_plans(nnunet_dirs, tmp_path_factory):
    """RaSD plans for a Residual Encoder U-Net (random weights with measured moments)."""
    weights = save_random_weights("rasd2d_resenc_small", tmp_path_factory.mktemp("w") / "resenc",
                                  seed=5, normalization=OTHER_NORMALIZATION)
    plan_dataset(DATASET_ID, str(weights), plans_name="RaSDResEncPlans")
    plans, dataset_json = load_plans(nnunet_dirs, "RaSDResEncPlans")
    return weights, plans, dataset_json


def test_resenc_plans_carry_its_strides_for_nnunets_deep_supervision(nnunet_dirs, resenc_plans):
    _, plans, _ = resenc_plans
    arch = plans["configurations"]["2d"]["architecture"]
    assert arch["arch_kwargs"]["rasd_architecture"] == "rasd2d_resenc_small"
    assert arch["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    assert arch["arch_kwargs"]["rasd_model_args"]["deep_supervision"] is False  # nnU-Net switches it
    assert plans["configurations"]["2d"]["patch_size"] == [64, 64]


def test_resenc_fine_tunes_with_deep_supervision_and_predicts_from_the_plans(nnunet_dirs, use_weights,
                                                                             resenc_plans):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    weights, plans, dataset_json = resenc_plans
    trainer = T.RaSDTrainerSmall_2epochs_cpu(plans=plans, configuration="2d", fold=3,
                                             dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.enable_deep_supervision is True
    saved = load_file(str(weights / "model.safetensors"))
    state = trainer.network.net.state_dict()
    body = [k for k in saved if ".seg_layers." not in k]
    assert body and all(torch.equal(state[k], saved[k]) for k in body)
    assert mapping(trainer.network) == (0.3, 0.4)  # the weights' moments (std, mean)
    outputs = trainer.network.train()(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, 2, 64, 64), (2, 2, 32, 32), (2, 2, 16, 16), (2, 2, 8, 8)]
    trainer.run_training()  # nnU-Net's loop: deep-supervision loss, checkpoints
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_final.pth"))

    manager = PlansManager(trainer.plans_manager.plans)
    net = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2,
                                                   enable_deep_supervision=False)
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"),
                            weights_only=False, map_location="cpu")
    net.load_state_dict(checkpoint["network_weights"], strict=True)
    x = torch.randn(1, 1, 64, 64)
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), trainer.network.eval()(x))
    assert net.pretrained["source"] == str(weights)
