"""Pure pieces of the nnU-Net plugin: patch rounding, schedule, normalisation mapping, datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plugin import datasets
from nnunet_plugin.errors import PatchTooSmallError, UnknownNormalizationError
from nnunet_plugin.normalization import map_channel, target_moments
from nnunet_plugin.planning import round_patch_size
from nnunet_plugin.schedule import WarmupPolyLR, warmup_epochs_for

# ------------------------------------------------------------------ the planned network


def test_plans_describe_the_whole_network_with_its_class_head():
    """The plans' arguments build the network the weights were adapted to (every pre-trained
    layer and a 1x1 head); plans written before the class head existed still build theirs."""
    from nnunet_plugin.network import RaSDNetwork, architecture_entry
    from nnunet_plugin.pretrained import load_weights

    weights = load_weights("rasd2d_small", in_chans=1, num_classes=3)
    kwargs = architecture_entry(weights.config, [1.0], [0.0])["arch_kwargs"]
    assert kwargs["rasd_model_args"]["head_channels"] == 32
    network = RaSDNetwork(1, 3, **kwargs)
    network.net.load_state_dict(weights.state_dict, strict=True)
    old_args = {k: v for k, v in kwargs["rasd_model_args"].items() if k != "head_channels"}
    old = RaSDNetwork(1, 3, **dict(kwargs, rasd_model_args=old_args)).net.state_dict()
    assert not any(k.startswith("head.") for k in old)
    assert old["model.2.0.conv.weight"].shape[1] == 3  # the top block ends in the classes


# ------------------------------------------------------------------ patch sizes


@pytest.mark.parametrize("planned, rounded", [
    ([64, 64], [64, 64]),            # already fits
    ([40, 40], [48, 48]),            # ties round up: more context, not less
    ([56, 70], [64, 64]),
    ([128, 112, 160], [128, 112, 160]),
    ([33, 100], [32, 96]),
])
def test_patch_rounded_to_nearest_multiple(planned, rounded):
    assert round_patch_size(planned, divisor=16, min_size=32) == rounded


def test_patch_rounding_for_swin_unetr_uses_multiples_of_32():
    assert round_patch_size([80, 160, 112], divisor=32, min_size=64) == [96, 160, 128]


def test_patch_below_minimum_is_refused_with_advice():
    with pytest.raises(PatchTooSmallError) as err:
        round_patch_size([20, 192, 160], divisor=32, min_size=64, configuration="3d_fullres")
    msg = str(err.value)
    assert "[20, 192, 160]" in msg and "at least 64" in msg and "2D configuration" in msg


# ------------------------------------------------------------------ schedule


def _lrs(peak, epochs, warmup):
    import torch

    optimiser = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = WarmupPolyLR(optimiser, peak, epochs, warmup)
    out = []
    for epoch in range(epochs):  # nnU-Net steps once per epoch, with the epoch number
        schedule.step(epoch)
        out.append(schedule.get_last_lr()[0])
    return out


def test_warmup_then_poly_decay():
    epochs, peak = 1000, 3e-4
    warmup = warmup_epochs_for(epochs)
    assert warmup == 50
    lrs = _lrs(peak, epochs, warmup)
    assert lrs[0] == pytest.approx(peak / 50)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))  # rising
    assert lrs[warmup - 1] == lrs[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # then falling
    assert 0 < lrs[-1] < peak * 0.01


def test_schedule_is_a_function_of_the_epoch():
    """--c restores current_epoch only; the rate must not depend on how often step ran before."""
    import torch

    optimiser = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = WarmupPolyLR(optimiser, 1.0, 20, 2)
    fresh.step(7)
    assert fresh.get_last_lr() == pytest.approx([_lrs(1.0, 20, 2)[7]])


def test_warmup_of_short_runs_follows_nnunets_linear_ramp():
    assert warmup_epochs_for(2) == 1
    assert _lrs(1.0, 2, 1) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert _lrs(1.0, 4, 2)[0] == pytest.approx(0.5)


# ------------------------------------------------------------------ normalisation


def test_zscore_weights_match_nnunet_zscore_and_ct():
    for scheme in ("ZScoreNormalization", "CTNormalization"):
        m = map_channel(scheme, {"method": "zscore"})
        assert (m.scale, m.shift, m.matched) == (1.0, 0.0, True)


def test_minmax_weights_get_moment_matching_map():
    m = map_channel("ZScoreNormalization", {"method": "minmax", "range": [0, 1]})
    assert (m.scale, m.shift) == (0.25, 0.5) and not m.matched
    assert "MISMATCH explained" in m.explanation and "0.25 * x + 0.5" in m.explanation


def test_measured_moments_in_config_win_over_the_range_guess():
    norm = {"method": "minmax", "range": [0, 1], "mean": 0.4, "std": 0.2}
    assert target_moments(norm)[1:3] == (0.4, 0.2)
    m = map_channel("CTNormalization", norm)
    assert (m.scale, m.shift) == (pytest.approx(0.2), pytest.approx(0.4))


def test_unit_range_channels_match_minmax_weights():
    m = map_channel("RescaleTo01Normalization", {"method": "minmax", "range": [0, 1]})
    assert m.matched and (m.scale, m.shift) == (1.0, 0.0)


def test_unknown_weights_normalisation_is_an_error_not_a_guess():
    with pytest.raises(UnknownNormalizationError, match="'histogram'"):
        map_channel("ZScoreNormalization", {"method": "histogram"})


def test_unnormalised_channels_are_flagged():
    m = map_channel("NoNormalization", {"method": "minmax", "range": [0, 1]})
    assert m.explanation.startswith("WARNING") and "re-run nnUNetv2_plan_and_preprocess" in m.explanation


# ------------------------------------------------------------------ datasets


def test_read_mrc_decodes_header_and_zyx_order():
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # z, y, x
    header = np.zeros(256, dtype="<i4")
    header[:4] = [4, 3, 2, 2]  # nx, ny, nz, mode 2 = float32
    data = header.tobytes() + vol.astype("<f4").tobytes()
    np.testing.assert_array_equal(datasets.read_mrc(data), vol)


def test_read_mrc_rejects_unknown_modes():
    header = np.zeros(256, dtype="<i4")
    header[:4] = [2, 2, 2, 99]
    with pytest.raises(datasets.DatasetFetchError):
        datasets.read_mrc(header.tobytes() + bytes(64))


def test_synthetic_dataset_has_nnunet_layout(tmp_path):
    folder = datasets.build_synthetic_dataset(tmp_path, 990, num_cases=5, shape=(32, 32),
                                              num_channels=2, num_test=1)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and meta["channel_names"] == {"0": "MRI", "1": "MRI"}
    assert meta["labels"] == {"background": 0, "blob": 1}
    assert len(list((folder / "imagesTr").glob("*.nii.gz"))) == 10  # 5 cases x 2 channels
    assert len(list((folder / "labelsTr").glob("*.nii.gz"))) == 5
    assert len(list((folder / "imagesTs").glob("*_0001.nii.gz"))) == 1


def test_dice_per_label():
    a = np.array([0, 1, 1, 2])
    b = np.array([0, 1, 2, 2])
    d = datasets.dice_per_label(a, b, [1, 2, 3])
    assert d[1] == pytest.approx(2 / 3) and d[2] == pytest.approx(2 / 3) and np.isnan(d[3])


@pytest.mark.slow
def test_fetch_and_convert_real_volumes(tmp_path):
    """The three registry-hosted volumes download, decode and convert (cached per machine)."""
    import SimpleITK as sitk

    image, label = datasets.load_liver_ct()
    assert image.shape == label.shape == (128, 128, 128)
    assert set(np.unique(label)) == {0, 1, 2} and image.min() < -500 < 500 < image.max()  # HU
    t1, tissue = datasets.load_mni_brain()
    assert t1.shape == tissue.shape == (189, 233, 197) and set(np.unique(tissue)) == {0, 1, 2}
    nuclei, instances = datasets.load_nuclei()
    assert nuclei.shape == instances.shape == (60, 256, 256) and instances.max() == 20
    folder = datasets.build_liver_ct_2d(tmp_path, 501, size=64)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 24
    assert len(list((folder / "imagesTs").glob("*.nii.gz"))) == 8
    for build, shape, train, test in [(datasets.build_liver_ct_3d, (32, 64, 64), 9, 3),
                                      (datasets.build_nuclei_3d, (60, 64, 64), 12, 4)]:
        folder = build(tmp_path)
        labels = sorted((folder / "labelsTs").glob("*.nii.gz"))
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == train
        assert len(labels) == test
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(labels[0])))
        assert reference.shape == shape and reference.any()  # every test block holds foreground
