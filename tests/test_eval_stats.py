"""Dice and summary statistics of the evaluation harness, on known numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_plugin.datasets import dice_per_label
from nnunet_plugin.evaluation.finetune import summarise_cases
from nnunet_plugin.evaluation.stats import mean_ci, one_sample_test, paired_test


def _square(y0, x0, size=2, shape=(8, 8)):
    a = np.zeros(shape, np.int64)
    a[y0:y0 + size, x0:x0 + size] = 1
    return a


def test_dice_perfect_empty_and_known_overlap():
    ref = _square(2, 2)
    assert dice_per_label(ref, ref, [1]) == {1: 1.0}
    assert dice_per_label(np.zeros_like(ref), ref, [1]) == {1: 0.0}  # nothing predicted
    assert dice_per_label(ref, np.zeros_like(ref), [1]) == {1: 0.0}  # false positives only
    # 4 voxels each, 2 shared: 2 * 2 / (4 + 4) = 0.5
    assert dice_per_label(_square(2, 3), ref, [1]) == {1: 0.5}


def test_dice_empty_empty_is_nan_and_ignored_in_class_means():
    empty = np.zeros((8, 8), np.int64)
    assert math.isnan(dice_per_label(empty, empty, [1])[1])
    per_case = {"a": {"liver": 1.0, "tumour": float("nan")}, "b": {"liver": 0.5, "tumour": 0.2}}
    per_class, mean = summarise_cases(per_case, ["liver", "tumour"])
    assert per_class == {"liver": 0.75, "tumour": 0.2}  # the NaN case does not count as 0 or 1
    assert mean == pytest.approx(0.475)
    per_class, mean = summarise_cases({"a": {"x": float("nan")}}, ["x"])
    assert math.isnan(per_class["x"]) and math.isnan(mean)


def test_mean_ci_uses_the_t_distribution():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302652729749462
    half = 4.302652729749462 / math.sqrt(3)
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.low == pytest.approx(2 - half) and ci.high == pytest.approx(2 + half)
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and one.as_dict()["ci95"] == [None, None]
    with pytest.raises(ValueError):
        mean_ci([0.5, float("nan")])


def test_paired_t_test_on_known_numbers():
    # differences 1, 1, 2, 1: mean 1.25, sd 0.5, t = 1.25 / (0.5 / 2) = 5 with 3 df
    result = paired_test([1, 2, 3, 4], [2, 3, 5, 5])
    assert result.mean_difference == pytest.approx(1.25)
    assert result.p_value == pytest.approx(0.015392438073302294)
    assert paired_test([2, 3, 5, 5], [1, 2, 3, 4]).p_value == pytest.approx(result.p_value)
    assert result.test == "paired t-test (two-sided)"


def test_paired_test_degenerate_cases():
    assert paired_test([0.5, 0.6], [0.5, 0.6]).p_value == 1.0  # identical runs: no difference
    assert math.isnan(paired_test([0.5, 0.6], [0.6, 0.7]).p_value)  # constant shift: t infinite
    assert math.isnan(paired_test([0.5], [0.9]).p_value)  # one seed: no test
    with pytest.raises(ValueError):
        paired_test([1, 2], [1])


def test_one_sample_t_test_on_known_numbers():
    # sample 1, 2, 3, 4 against 5: mean 2.5, sd sqrt(5/3), t = -2.5 / (sd / 2) = -3.8730 with 3 df
    result = one_sample_test([1, 2, 3, 4], 5)
    assert result.p_value == pytest.approx(0.030466291662170977)
    assert result.mean_difference == pytest.approx(2.5)  # the fixed value minus the sample mean
    assert result.n == 4 and result.test == "one-sample t-test (two-sided)"
    assert one_sample_test([1, 2, 3, 4], 0).mean_difference == pytest.approx(-2.5)
    assert one_sample_test([1, 2, 3, 4], 2.5).p_value == pytest.approx(1.0)  # value = sample mean


def test_one_sample_test_degenerate_cases():
    assert one_sample_test([0.4, 0.4], 0.4).p_value == 1.0  # the sample is the value
    assert math.isnan(one_sample_test([0.4, 0.4], 0.5).p_value)  # no spread: t infinite
    assert math.isnan(one_sample_test([0.4], 0.5).p_value)  # one seed: no test
    with pytest.raises(ValueError, match="NaN"):
        one_sample_test([0.4, float("nan")], 0.5)


def _report(config, **per_seed):
    from nnunet_plugin.evaluation.compare import Report
    from nnunet_plugin.evaluation.finetune import RunResult

    runs = {init: [RunResult(init, seed, {}, v, {}) for seed, v in enumerate(values)]
            for init, values in per_seed.items()}
    return Report(None, "rasd2d_small", None, list(range(5)), config, runs)


def test_probe_tests_scratchs_seeds_against_the_fixed_pretrained_value():
    from nnunet_plugin.evaluation.finetune import FinetuneConfig

    scratch, pretrained = [0.50, 0.52, 0.49, 0.53, 0.51], [0.60] * 5
    (pair,) = _report(None, scratch=scratch, rasd=pretrained).pairs()
    assert pair["test"] == "one-sample t-test (two-sided)"
    assert pair["p_value"] == pytest.approx(0.0002195114192059883)  # t = 12.73, 4 df
    assert pair["mean_difference"] == pytest.approx(0.09) and pair["n"] == 5
    # after fine-tuning both inits vary by seed and seed s pairs them: the paired test
    (pair,) = _report(FinetuneConfig(), scratch=scratch, rasd=[0.61, 0.60, 0.62, 0.60, 0.63]).pairs()
    assert pair["test"] == "paired t-test (two-sided)"
    # two sets of fixed weights in the probe: nothing varies, nothing to test
    (pair,) = _report(None, a=[0.6] * 5, b=[0.7] * 5).pairs()
    assert pair["p_value"] is None and pair["test"].startswith("undefined")
    assert pair["mean_difference"] == pytest.approx(0.1)


def test_pca_colouring_separates_regions_with_different_features():
    from nnunet_plugin.evaluation.probe import pca_rgb

    rng = np.random.default_rng(0)
    embedding = rng.normal(0, 0.01, (8, 6, 6))
    embedding[:, :, 3:] += rng.normal(0, 1, (8, 1, 1))  # right half: another feature vector
    rgb = pca_rgb(embedding)
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :3].reshape(-1, 3).mean(0), rgb[:, 3:].reshape(-1, 3).mean(0)
    assert np.abs(left - right).max() > 100  # the first component tells the halves apart


def test_display_slice_picks_the_slice_with_most_foreground():
    from nnunet_plugin.evaluation.pictures import display_slice

    label = np.zeros((5, 8, 8), np.uint8)
    label[1, :2, :2] = 1
    label[3, :4, :4] = 2
    assert display_slice(label) == (3,)
    assert display_slice(label[3]) == ()
