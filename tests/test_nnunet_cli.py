"""End to end through nnU-Net's own commands, as a user runs them (CPU, real data).

Each command is a fresh interpreter without ``nnUNet_extTrainer`` or ``RASD_WEIGHTS`` in its
environment unless a test sets one, so these tests also prove that the installed start-up hook
makes ``-tr RaSD...`` resolvable and that nothing but the results folder is needed to predict.

Data: the real nuclei tiles shipped in the package (``build_nuclei_tiles``: 8 training and 2 test
128 x 128 confocal sections), planned by nnU-Net and then by ``rasd nnunet plan`` with the shipped
``rasd2d_small`` weights. Fold 0 trains from the plans' weights, fold 1 from other weights
(``RASD_WEIGHTS``, other measured moments, so another input mapping).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_plugin.datasets import build_liver_ct_2d, build_liver_ct_3d, build_nuclei_tiles, dice_per_label
from nnunet_plugin.commands import (
    nnunet_command, nnunet_environment, plan_and_preprocess, rasd_plan, run_nnunet,
    save_random_weights,
)

SMOKE_TRAINER = "RaSDTrainerSmall_2epochs_cpu"
SHORT_TRAINER = "RaSDTrainerSmall_20epochs_cpu"
RESENC_TRAINER = SHORT_TRAINER  # the pipeline check: AdamW 1e-3 (SGD 1e-3 reached 0.66 in 240 iterations)
RESENC_3D_TAG = "rasd3d_resenc_small.synth2000_cpu"
NUCLEI = 506
BLOCK_3D = (64, 32, 32)
OTHER_NORMALIZATION = {"method": "minmax", "range": [0.0, 1.0], "mean": 0.4, "std": 0.3}


def _train(dataset_id, fold, env, *extra, trainer=SMOKE_TRAINER, configuration="2d", plans="RaSDPlans",
           check=True):
    return run_nnunet(["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-p", plans,
                       "-tr", trainer, "-device", "cpu", *extra], env, check=check)


def _predict(dataset_id, env, images, out, folds=("0",), trainer=SMOKE_TRAINER, configuration="2d",
             plans="RaSDPlans", mirroring=True):
    """``mirroring=False`` (nnU-Net's --disable_tta) for plumbing checks: in 3D the mirrored
    test-time augmentation runs the network 8 times per window."""
    return run_nnunet(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id),
                       "-c", configuration, "-f", *folds, "-p", plans, "-tr", trainer,
                       "-device", "cpu", "--disable_progress_bar", "-npp", "1", "-nps", "1",
                       *([] if mirroring else ["--disable_tta"])], env)


@pytest.fixture(scope="module")
def liver_ct_2d(tmp_path_factory):
    """The 2D liver slices (dataset 501), preprocessed once for every plans the tests add."""
    env = nnunet_environment(tmp_path_factory.mktemp("liver2d") / "nnunet")
    raw = build_liver_ct_2d(env["nnUNet_raw"], 501, size=64, merge_tumour=True)
    plan_and_preprocess(501, env)
    return env, raw


@pytest.fixture(scope="module")
def liver_ct_blocks(tmp_path_factory):
    """The real CT as 64x32x32 blocks that are at least 40 % liver (dataset 502: 10 training
    cases, 1 test case, a quarter of a 64^3 block's compute per patch), preprocessed once."""
    env = nnunet_environment(tmp_path_factory.mktemp("liver3d") / "nnunet")
    raw = build_liver_ct_3d(env["nnUNet_raw"], 502, block=BLOCK_3D, min_liver=0.4, test_every=8)
    plan_and_preprocess(502, env, configurations=("3d_fullres",), verify=False)
    return env, raw


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _model_dir(env, dataset_name, trainer=SMOKE_TRAINER, configuration="2d", plans="RaSDPlans") -> Path:
    return Path(env["nnUNet_results"]) / dataset_name / f"{trainer}__{plans}__{configuration}"


def _log(fold_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(fold_dir.glob("training_log_*.txt")))


def _network_state(fold_dir: Path, name: str = "checkpoint_final.pth") -> dict:
    return torch.load(fold_dir / name, map_location="cpu", weights_only=False)["network_weights"]


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    """The planned nuclei dataset with folds 0 (plans' weights) and 1 (other weights) trained."""
    root = tmp_path_factory.mktemp("nuclei")
    env = nnunet_environment(root / "nnunet")
    env.pop("RASD_WEIGHTS", None)
    raw = build_nuclei_tiles(env["nnUNet_raw"], NUCLEI)
    plan_and_preprocess(NUCLEI, env, verify=False)
    rasd_plan(NUCLEI, env, "rasd2d_small")
    other = save_random_weights("rasd2d_small", root / "other", seed=3, normalization=OTHER_NORMALIZATION)
    _train(NUCLEI, 0, env)
    _train(NUCLEI, 1, dict(env, RASD_WEIGHTS=str(other)))
    return {"env": env, "raw": raw, "other": other, "root": root,
            "model": _model_dir(env, raw.name),
            "plans": Path(env["nnUNet_preprocessed"]) / raw.name / "RaSDPlans.json"}


def _validation_inputs(nuclei, fold: int, out: Path) -> list[str]:
    """The fold's validation cases (nnU-Net's split) as raw images, for nnUNetv2_predict."""
    splits = json.loads((Path(nuclei["env"]["nnUNet_preprocessed"]) / nuclei["raw"].name /
                         "splits_final.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for case in splits[fold]["val"]:
        shutil.copy(nuclei["raw"] / "imagesTr" / f"{case}_0000.nii.gz", out)
    return splits[fold]["val"]


@pytest.mark.slow
def test_each_fold_predicts_alone_with_its_own_weights_and_mapping(nuclei, tmp_path):
    """nnUNetv2_predict in a fresh process with no environment variable reproduces, fold by fold,
    the predictions nnU-Net's own validation made inside the training process. Before, the input
    mapping lived only in the shared plans.json, so fold 0 would have predicted with fold 1's."""
    env, model = nuclei["env"], nuclei["model"]
    zero, one = _network_state(model / "fold_0"), _network_state(model / "fold_1")
    assert zero["_extra_state"]["pretrained"]["source"] == "rasd2d_small.v2_synth10k_cpu"
    assert one["_extra_state"]["pretrained"]["source"] == str(nuclei["other"].resolve())
    assert zero["input_scale"].item() == pytest.approx(0.2405) and one["input_scale"].item() == pytest.approx(0.3)
    assert "(from RASD_WEIGHTS, replacing the plans' weights)" in _log(model / "fold_1")
    # the trainers never rewrite the plans: every fold's results share what planning wrote
    assert json.loads((model / "plans.json").read_text()) == json.loads(nuclei["plans"].read_text())

    for fold in (0, 1):
        cases = _validation_inputs(nuclei, fold, tmp_path / f"in{fold}")
        _predict(NUCLEI, env, tmp_path / f"in{fold}", tmp_path / f"out{fold}", folds=(str(fold),))
        for case in cases:
            alone = _read(tmp_path / f"out{fold}" / f"{case}.nii.gz")
            in_training = _read(model / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
            assert np.array_equal(alone, in_training), (fold, case)

    _predict(NUCLEI, env, nuclei["raw"] / "imagesTs", tmp_path / "both", folds=("0", "1"))
    for ref in sorted((nuclei["raw"] / "labelsTs").glob("*.nii.gz")):
        pred = _read(tmp_path / "both" / ref.name)
        assert pred.shape == _read(ref).shape and set(np.unique(pred)) <= {0, 1}


@pytest.mark.slow
def test_from_scratch_twin_trains_the_same_plans_with_the_same_mapping(nuclei):
    """The shipped weights carry measured moments (0.465 / 0.2405): the baseline must use the
    same mapping, not the range guess (0.5 / 0.25) it used before."""
    twin = "RaSDTrainerSmallFromScratch_2epochs_cpu"
    _train(NUCLEI, 0, nuclei["env"], trainer=twin)
    scratch = _network_state(_model_dir(nuclei["env"], nuclei["raw"].name, trainer=twin) / "fold_0")
    pretrained = _network_state(nuclei["model"] / "fold_0")
    for key in ("input_scale", "input_shift"):
        assert torch.equal(scratch[key], pretrained[key]), key
    assert scratch["input_scale"].item() == pytest.approx(0.2405)
    assert scratch["_extra_state"]["pretrained"] is None
    assert scratch["_extra_state"]["model_args"] == pretrained["_extra_state"]["model_args"]


@pytest.mark.slow
def test_validation_only_needs_no_weights_and_keeps_the_folds_mapping(nuclei):
    """--val / --val_best restore nnU-Net's checkpoint; RASD_WEIGHTS neither needs to be set nor,
    when set to other weights, changes the mapping."""
    env, fold = nuclei["env"], nuclei["model"] / "fold_1"  # fold 1 trained on other weights
    before = {p.name: _read(p) for p in (fold / "validation").glob("*.nii.gz")}
    assert before
    shutil.rmtree(fold / "validation")
    _train(NUCLEI, 1, dict(env, RASD_WEIGHTS="rasd2d_small"), "--val")
    after = {p.name: _read(p) for p in (fold / "validation").glob("*.nii.gz")}
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert "RASD_WEIGHTS" not in env
    _train(NUCLEI, 1, env, "--val", "--val_best")
    assert (fold / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_continue_on_a_fold_without_checkpoint_starts_from_the_plans_weights(nuclei):
    """--c on a fold that has no checkpoint yet (other folds do) is a fresh start from the plans'
    weights, not from random weights under the name RaSDTrainer."""
    env, fold = nuclei["env"], nuclei["model"] / "fold_2"
    assert not fold.exists()
    _train(NUCLEI, 2, env, "--c")
    assert "RaSD: loaded rasd2d_small.v2_synth10k_cpu" in _log(fold)
    assert _network_state(fold)["_extra_state"]["pretrained"]["source"] == "rasd2d_small.v2_synth10k_cpu"


@pytest.mark.slow
def test_model_zip_installs_and_predicts_elsewhere(nuclei, tmp_path):
    env = nuclei["env"]
    archive = tmp_path / "model.zip"
    run_nnunet(["nnUNetv2_export_model_to_zip", "-d", str(NUCLEI), "-o", str(archive), "-c", "2d",
                "-tr", SMOKE_TRAINER, "-p", "RaSDPlans", "-f", "0", "1"], env)
    elsewhere = nnunet_environment(tmp_path / "elsewhere")
    run_nnunet(["nnUNetv2_install_pretrained_model_from_zip", str(archive)], elsewhere)
    _predict(NUCLEI, env, nuclei["raw"] / "imagesTs", tmp_path / "here", folds=("0", "1"))
    _predict(NUCLEI, elsewhere, nuclei["raw"] / "imagesTs", tmp_path / "there", folds=("0", "1"))
    for ref in sorted((nuclei["raw"] / "labelsTs").glob("*.nii.gz")):
        assert np.array_equal(_read(tmp_path / "here" / ref.name), _read(tmp_path / "there" / ref.name))


@pytest.mark.slow
def test_continue_after_a_kill_ends_bit_identical_to_an_uninterrupted_run(nuclei, tmp_path):
    """kill -9 after the first epoch's checkpoint, then --c: the same final weights as one
    uninterrupted run (CPU, nnUNet_n_proc_DA=0: the trainer seeds every epoch). One thread per
    process: with two, a run on a busy machine once ended with last-bit differences (a math
    library may choose its thread count by load, which changes the order of its sums)."""
    env = dict(nuclei["env"], OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    reference = dict(env, nnUNet_results=str(tmp_path / "reference"))
    _train(NUCLEI, 3, reference)
    fold = nuclei["model"] / "fold_3"
    proc = subprocess.Popen([nnunet_command("nnUNetv2_train"), str(NUCLEI), "2d", "3", "-p", "RaSDPlans",
                             "-tr", SMOKE_TRAINER, "-device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (fold / "checkpoint_latest.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (fold / "checkpoint_latest.pth").exists() and not (fold / "checkpoint_final.pth").exists()
    _train(NUCLEI, 3, env, "--c")
    assert not list(fold.glob(".tmp-*")), "temporary files of a killed write are cleaned up"
    resumed = _network_state(fold)
    uninterrupted = _network_state(_model_dir(reference, nuclei["raw"].name) / "fold_3")
    differ = [k for k, v in uninterrupted.items() if isinstance(v, torch.Tensor) and not torch.equal(resumed[k], v)]
    assert differ == []


@pytest.mark.slow
def test_bad_weights_or_plans_end_with_one_clear_message(nuclei, tmp_path):
    env = nuclei["env"]
    gone = Path(shutil.copytree(nuclei["other"], tmp_path / "gone"))
    rasd_plan(NUCLEI, env, gone, "--plans-name", "RaSDPlans_gone")
    shutil.rmtree(gone)
    for plans, expected in (("RaSDPlans_gone", "no such directory"),
                            ("nnUNetPlans", "are not RaSD plans")):
        proc = _train(NUCLEI, 4, env, plans=plans, check=False)
        assert proc.returncode != 0
        assert "RaSD: error:" in proc.stderr and expected in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    proc = run_nnunet(["rasd", "nnunet", "plan", "-d", str(NUCLEI), "--weights", "rasd2d"], env, check=False)
    assert proc.returncode == 2 and "rasd hub convert" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("weights,plans,trainer", [
    ("rasd2d_small", "RaSDPlans", SHORT_TRAINER),
    ("rasd2d_resenc_small", "RaSDResEncPlans", RESENC_TRAINER),
])
def test_liver_ct_end_to_end_dice_above_floor(liver_ct_2d, tmp_path, weights, plans, trainer):
    """Real data: axial slices of a LiTS CT (64x64, liver incl. tumour vs rest), fetched from the
    package index, planned, trained for 240 iterations on the CPU from the shipped rasd2d_small
    weights, predicted on held-out slices.

    Floor: the mean Dice over the 8 test slices must reach 0.7 and beat the best constant answer
    ("everything is liver", Dice 2f/(1+f) per slice, 0.43 on average here) by 0.2. A network
    that learned nothing predicts all background (Dice 0) or all liver (the baseline). Earlier
    development runs reached 0.83; the margin absorbs run-to-run noise, while a pipeline that
    does not learn stays far below (a run at peak lr 3e-4 instead of 1e-3 ended at 0.02).
    """
    started = time.time()
    env, raw = liver_ct_2d
    rasd_plan(501, env, weights, "--plans-name", plans)
    _train(501, 0, env, trainer=trainer, plans=plans)
    out = tmp_path / "pred"
    _predict(501, env, raw / "imagesTs", out, trainer=trainer, plans=plans)

    dices, baselines = [], []
    for ref_path in sorted((raw / "labelsTs").glob("*.nii.gz")):
        ref, pred = _read(ref_path), _read(out / ref_path.name)
        assert pred.shape == ref.shape == (1, 64, 64)
        assert set(np.unique(pred)) <= {0, 1}
        dices.append(dice_per_label(pred, ref, [1])[1])
        f = (ref == 1).mean()
        baselines.append(2 * f / (1 + f))
    dice, baseline = float(np.mean(dices)), float(np.mean(baselines))
    print(f"liver CT e2e ({weights}): mean Dice {dice:.3f} (constant baseline {baseline:.3f}), "
          f"{time.time() - started:.0f} s")
    assert len(dices) == 8
    assert dice >= 0.7 and dice >= baseline + 0.2, (dice, baseline, dices)


@pytest.mark.slow
@pytest.mark.parametrize("weights,plans,tag", [
    ("rasd3d_small", "RaSDPlans", "rasd3d_small.synth2300_h200"),
    ("rasd3d_resenc_small", "RaSDResEncPlans", RESENC_3D_TAG),
])
def test_3d_fullres_on_liver_ct_blocks(liver_ct_blocks, tmp_path, weights, plans, tag):
    """The 3D path (3d_fullres, shipped weights, sliding-window prediction; deep supervision for
    the ResEnc U-Net) runs end to end on blocks of the real CT. Two tiny epochs: this checks
    plumbing, not accuracy."""
    env, raw = liver_ct_blocks
    rasd_plan(502, env, weights, "-c", "3d_fullres", "--plans-name", plans)
    _train(502, 0, env, configuration="3d_fullres", plans=plans)
    out = tmp_path / "pred"
    _predict(502, env, raw / "imagesTs", out, configuration="3d_fullres", plans=plans, mirroring=False)
    (ref_path,) = sorted((raw / "labelsTs").glob("*.nii.gz"))
    pred = _read(out / ref_path.name)
    assert pred.shape == _read(ref_path).shape == BLOCK_3D
    assert set(np.unique(pred)) <= {0, 1, 2}
    fold = _model_dir(env, raw.name, configuration="3d_fullres", plans=plans) / "fold_0"
    assert f"RaSD: loaded {tag}" in _log(fold)


@pytest.mark.slow
def test_rasd_pretrain_resencl_weights_fine_tune_in_nnunet_3d(tmp_path):
    """The paper-scale ResEnc-L (nnssl's layout, 102M parameters) from `rasd pretrain` (2 steps at
    64^3 on CPU) is planned for a real 3D dataset and fine-tuned by nnUNetv2_train -tr RaSDTrainer...
    on 3d_fullres, then predicts: the whole user path with weights this project produced."""
    import rasd_hub
    from safetensors.torch import load_file

    env = nnunet_environment(tmp_path / "nnunet")
    run = tmp_path / "pretrain"
    run_nnunet(["rasd", "pretrain", "--preset", "rasd3d_resencl", "--size", "64", "--steps", "2",
                "--batch-size", "1", "--num-classes", "4", "--checkpoint-every", "2", "--device", "cpu",
                "--out", str(run), "--no-preview", "--no-progress"], env, timeout=1800)
    export = run / "export"
    model = rasd_hub.load(export)
    assert model.rasd_config["architecture"] == "rasd3d_resencl"
    assert sum(p.numel() for p in model.parameters()) == 102_373_920

    # 64^3 (ResEnc-L needs 64 voxels a side): 5 training cases, so fold 0 validates one
    raw = build_liver_ct_3d(env["nnUNet_raw"], 507, block=64, min_liver=0.02, test_every=8)
    plan_and_preprocess(507, env, configurations=("3d_fullres",), verify=False)
    rasd_plan(507, env, export, "-c", "3d_fullres", "--plans-name", "RaSDResEncPlans")
    _train(507, 0, env, configuration="3d_fullres", plans="RaSDResEncPlans")
    fold = _model_dir(env, raw.name, configuration="3d_fullres", plans="RaSDResEncPlans") / "fold_0"
    assert "RaSD: loaded" in _log(fold) and str(export) in _log(fold)
    # the pre-trained encoder went into nnU-Net's network: after 6 AdamW steps it is still much
    # nearer the pre-trained weights than an independent initialisation of the same network is
    pretrained = load_file(str(export / "model.safetensors"))
    tuned = _network_state(fold)
    torch.manual_seed(123)
    independent = rasd_hub.create_model("rasd3d_resencl").state_dict()
    for key in ("encoder.stem.convs.0.conv.weight", "encoder.stages.5.blocks.0.conv2.conv.weight"):
        moved = (tuned["net." + key].float() - pretrained[key].float()).norm()
        unrelated = (independent[key].float() - pretrained[key].float()).norm()
        assert moved < 0.5 * unrelated, (key, float(moved), float(unrelated))
    out = tmp_path / "pred"
    _predict(507, env, raw / "imagesTs", out, configuration="3d_fullres", plans="RaSDResEncPlans",
             mirroring=False)
    (ref_path,) = sorted((raw / "labelsTs").glob("*.nii.gz"))
    assert _read(out / ref_path.name).shape == _read(ref_path).shape == (64, 64, 64)
