"""The evaluation harness feeds its networks what ``RaSDTrainer`` feeds them.

The trainer's path is nnU-Net's: its planner picks a normalisation class per channel name, its
preprocessor runs that class with the dataset fingerprint's foreground intensity properties, and
the RaSD network then maps ``x * scale + shift`` onto the weights (``plan_input_mapping``). The
fast tests build that path from nnU-Net's own functions and ``RaSDNetwork`` and compare the
tensor reaching the rasd_hub model with the harness's; the slow test compares the harness's
normalised images with what ``nnUNetv2_plan_and_preprocess`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_plugin.normalization import (
    NnUNetNormalization, fit_nnunet_normalization, nnunet_scheme, plan_input_mapping,
)
from rasd_hub.errors import RasdValueError

MINMAX_WEIGHTS = {"method": "minmax", "range": [0.0, 1.0], "mean": 0.5238, "std": 0.2104}
ZSCORE_WEIGHTS = {"method": "zscore"}


def _case(seed: int, shape=(32, 32)):
    """A CT-like image (HU-ish values with outliers) and its label (a bright square)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int64)
    label[6:16, 5:15] = 1
    image = rng.normal(-200, 80, shape) + 300 * label
    image[0, 0], image[-1, -1] = 3000, -1024  # outliers the CT window must clip
    return image[None].astype(np.float32), label


def _nnunet_sampled_fingerprint(images, labels, samples_per_case: int = 200_000) -> dict:
    """Channel 0's foreground intensity properties the way nnU-Net's DatasetFingerprintExtractor
    computes them (crop to non-zero, the same number of draws from every case, pooled), with
    fewer draws than its 10^8."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    pooled = []
    for image, label in zip(images, labels):
        data, seg, _ = crop_to_nonzero(image[:, None], label[None, None].copy())
        draws, _ = DatasetFingerprintExtractor.collect_foreground_intensities(
            seg, data, num_samples=samples_per_case)
        pooled.append(draws[0])
    values = np.concatenate(pooled)
    lo, hi = np.percentile(values, (0.5, 99.5))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "percentile_00_5": float(lo), "percentile_99_5": float(hi)}


def _first_layer_input(network, x: np.ndarray) -> torch.Tensor:
    """What reaches the rasd_hub model inside ``network`` (after the input mapping)."""
    seen = []
    hook = network.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        network(torch.from_numpy(np.ascontiguousarray(x))[None])
    hook.remove()
    return seen[0]


def _trainer_input(channel_name: str, weights: dict, properties: dict, image) -> torch.Tensor:
    """RaSDTrainer's path: nnU-Net's preprocessing class for the channel with the fingerprint's
    ``properties``, then RaSDNetwork's mapping for the weights."""
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        get_normalization_scheme,
    )

    from nnunet_plugin.network import RaSDNetwork

    scheme = get_normalization_scheme(channel_name)
    normalised = scheme(use_mask_for_norm=False, intensityproperties=properties).run(image[0].copy())
    (mapping,) = plan_input_mapping([scheme.__name__], weights)
    network = RaSDNetwork(1, 2, "rasd2d_small", {}, [mapping.scale], [mapping.shift])
    return _first_layer_input(network, normalised[None])


@pytest.mark.parametrize("weights", [MINMAX_WEIGHTS, ZSCORE_WEIGHTS], ids=["minmax", "zscore"])
@pytest.mark.parametrize("channel_name", ["CT", "T2"])
def test_harness_and_trainer_give_the_network_identical_inputs(channel_name, weights):
    import rasd_hub

    (img0, lab0), (img1, lab1), (test_image, _) = _case(0), _case(1), _case(2)
    normalization = fit_nnunet_normalization({"0": channel_name}, [img0, img1], [lab0, lab1])
    path = normalization.for_weights(weights)
    network = path.network(rasd_hub.create_model("rasd2d_small", num_classes=2, in_chans=1))
    harness = _first_layer_input(network, normalization(test_image))
    # the same fingerprint (its agreement with nnU-Net's is tested below)
    properties = normalization.intensity_properties[0]
    trainer = _trainer_input(channel_name, weights, properties, test_image)
    assert torch.allclose(harness, trainer, atol=1e-6)
    # and neither is the raw image: the mapping lands on the weights' moments
    target_mean, target_std = (weights.get("mean", 0.0), weights.get("std", 1.0))
    if channel_name == "CT":  # clipped at the top of the training foreground's window
        top = (properties["percentile_99_5"] - properties["mean"]) / properties["std"]
        assert float(harness.max()) == pytest.approx(top * target_std + target_mean, rel=1e-5)
    else:  # z-scored per image, then mapped
        assert float(harness.mean()) == pytest.approx(target_mean, abs=1e-5)
        assert float(harness.std(unbiased=False)) == pytest.approx(target_std, rel=1e-4)


def test_ct_fingerprint_is_the_one_nnunets_sampling_estimates():
    """Every case weighs the same, whatever its size, as in nnU-Net's per-case draws."""
    rng = np.random.default_rng(0)
    small, large = np.zeros((32, 32), np.int64), np.zeros((32, 32), np.int64)
    # sizes chosen so that no percentile falls on a boundary between two voxels' weights
    small[4:13, 4:13] = 1  # 81 foreground voxels around 100
    large[4:23, 4:23] = 1  # 361 foreground voxels around 300
    images = [(rng.normal(100, 20, (32, 32)) * small - 500 * (1 - small))[None].astype(np.float32),
              (rng.normal(300, 20, (32, 32)) * large - 500 * (1 - large))[None].astype(np.float32)]
    ours = fit_nnunet_normalization({"0": "CT"}, images, [small, large]).intensity_properties[0]
    assert 195 < ours["mean"] < 205  # the mean of the two cases' means, not of all voxels (263)
    nnunet = _nnunet_sampled_fingerprint(images, [small, large])
    for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
        assert ours[key] == pytest.approx(nnunet[key], abs=1.0)  # nnU-Net's sampling noise


def test_scheme_choice_is_nnunets():
    assert nnunet_scheme("CT") == nnunet_scheme("ct") == "CTNormalization"
    assert nnunet_scheme("MRI") == nnunet_scheme("fluorescence") == "ZScoreNormalization"
    assert nnunet_scheme("noNorm") == "NoNormalization"


def test_ct_window_and_moments_come_from_the_training_foreground_only():
    ct = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(1, 20, 20)
    label = (ct[0] > 0).astype(np.int64)  # foreground = the positive half
    normalization = fit_nnunet_normalization({"0": "CT"}, [ct], [label])
    p = normalization.intensity_properties[0]
    assert 0 < p["percentile_00_5"] < 20 and 980 < p["percentile_99_5"] <= 1000
    assert 450 < p["mean"] < 550  # the positive half's mean, not the image's (about 0)
    out = normalization(ct)
    below = (p["percentile_00_5"] - p["mean"]) / p["std"]
    assert np.allclose(out[0][ct[0] < 0], below)  # below the window: clipped to its bottom
    assert "clip to [" in normalization.for_weights(MINMAX_WEIGHTS).describe()


def test_non_ct_channels_are_z_scored_per_image_without_a_fingerprint():
    image = np.array([[[10.0, 20.0], [30.0, 50.0]]], np.float32)
    normalization = fit_nnunet_normalization({"0": "T1"}, [image], [np.zeros((2, 2), int)])
    assert normalization.schemes == ["ZScoreNormalization"] and normalization.intensity_properties == [{}]
    out = normalization(image)
    assert out.mean() == pytest.approx(0, abs=1e-6) and out.std() == pytest.approx(1, abs=1e-5)
    assert image[0, 0, 0] == 10.0  # nnU-Net's classes work in place; the caller's image is kept


def test_bad_inputs_are_refused_with_a_reason():
    ct = np.ones((1, 4, 4), np.float32)
    with pytest.raises(RasdValueError, match="no foreground"):
        fit_nnunet_normalization({"0": "CT"}, [ct], [np.zeros((4, 4), int)])
    with pytest.raises(RasdValueError, match="does not fit its label"):
        fit_nnunet_normalization({"0": "CT"}, [ct], [np.zeros((3, 4), int)])
    normalization = NnUNetNormalization(["T1"], ["ZScoreNormalization"], [{}])
    with pytest.raises(RasdValueError, match="2 channels"):
        normalization(np.ones((2, 4, 4), np.float32))


@pytest.mark.slow
def test_harness_normalisation_is_what_nnunet_preprocessing_writes(tmp_path):
    """Against ``nnUNetv2_plan_and_preprocess`` itself: a CT and an MRI channel, 2D."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunet_plugin.commands import nnunet_environment, plan_and_preprocess
    from nnunet_plugin.datasets import Case, write_raw_dataset
    from nnunet_plugin.evaluation.data import load_case, open_dataset

    cases = []
    for i in range(3):
        image, label = _case(10 + i, shape=(32, 32))
        second = image[0] * 0.5 + 40  # a second, MRI-like contrast
        cases.append(Case(f"c_{i:03d}", [image[0], second], label.astype(np.uint8), (1.0, 1.0, 1.0)))
    env = nnunet_environment(tmp_path)
    raw = write_raw_dataset(env["nnUNet_raw"], 993, "HarnessIntensity", cases, {"0": "CT", "1": "MRI"},
                            {"background": 0, "square": 1}, [], description="harness intensity test")
    plan_and_preprocess(993, env, verify=False)

    dataset = open_dataset(raw)
    train = [load_case(dataset, c) for c in sorted(dataset.cases)]
    harness = fit_nnunet_normalization(dataset.channel_names, [c.image for c in train],
                                       [c.label for c in train])
    folder = Path(env["nnUNet_preprocessed"]) / raw.name
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text())
    assert harness.schemes == plans["configurations"]["2d"]["normalization_schemes"]
    nnunet_ct = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    ours = harness.intensity_properties[0]
    for key in ("percentile_00_5", "percentile_99_5"):  # voxel values, found by both
        assert ours[key] == pytest.approx(nnunet_ct[key], rel=1e-6)
    for key in ("mean", "std"):  # nnU-Net estimates them from 10^8 draws
        assert ours[key] == pytest.approx(nnunet_ct[key], abs=1e-3 * nnunet_ct["std"])
    data = infer_dataset_class(str(folder / "nnUNetPlans_2d"))(str(folder / "nnUNetPlans_2d"))
    for case in train:
        written = np.asarray(data.load_case(case.case_id)[0])[:, 0]  # (C, 1, y, x) -> (C, y, x)
        assert written.shape == case.image.shape
        assert np.allclose(harness(case.image), written, atol=2e-3)
