"""The synthesis engine: shapes, determinism, streams, presets, statistics and the fast path's
agreement with the exact evaluation and with the released algorithm. Small sizes only."""

import dataclasses

import pytest
import torch

from pretraining.bench_synth_reference import reference_sample
from pretraining.synthesis import PRESETS, SynthesisConfig, SyntheticStream, synthesize
from pretraining.synthesis.stats import (
    class_volume_fractions,
    compare,
    empty_class_fraction,
    summarize,
    surface_to_volume,
)
from rasd_hub.errors import RasdValueError


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dim, size", [(2, (48, 32)), (3, (24, 32, 16))])
def test_shapes_dtypes_and_ranges(preset, dim, size):
    config = SynthesisConfig.from_preset(preset, dim=dim, size=size, num_classes=5)
    image, label = synthesize(config, 3, generator=seeded(0))
    assert image.shape == (3, 1, *size) and image.dtype == torch.float32
    assert label.shape == (3, *size) and label.dtype == torch.int64
    assert 0 <= label.min() and label.max() < 5
    assert torch.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1  # both presets normalise


@pytest.mark.parametrize("preset", PRESETS)
def test_zscore_gives_every_sample_zero_mean_and_unit_std_with_the_same_labels(preset):
    config = SynthesisConfig.from_preset(preset, dim=2, size=32, num_classes=4)
    plain_image, plain_label = synthesize(config, 3, generator=seeded(0))
    image, label = synthesize(config.with_overrides({"zscore": True}), 3, generator=seeded(0))
    assert torch.equal(label, plain_label)  # only the intensities change
    std, mean = torch.std_mean(image.flatten(1), dim=1)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5) and torch.allclose(std, torch.ones(3), atol=1e-4)
    # the same image up to an affine map per sample
    for z, x in zip(image.flatten(1), plain_image.flatten(1)):
        assert torch.allclose(z, (x - x.mean()) / x.std(), atol=1e-3)


def test_overrides_replace_fields_and_refuse_what_they_cannot():
    config = SynthesisConfig.from_preset("paper", dim=2, size=64)
    larger = config.with_overrides({"heatmap_scales": [16, 32], "deformation_std_range": [0, 8]})
    assert larger.heatmap_scales == (16, 32) and larger.deformation_std_range == (0.0, 8.0)
    assert config.with_overrides({}) == config
    for overrides, message in [({"dim": 3}, "set by the run itself"),
                               ({"heatmap_scale": [8]}, "unknown synthesis field 'heatmap_scale'"),
                               ({"normalize": 1}, "takes true or false"),
                               ({"gamma_range": [2, 1]}, "low <= high")]:
        with pytest.raises(RasdValueError, match=message):
            config.with_overrides(overrides)


def test_same_seed_same_batch_and_other_seed_another():
    config = SynthesisConfig.from_preset("official", dim=3, size=32)
    first = synthesize(config, 2, generator=seeded(7))
    again = synthesize(config, 2, generator=seeded(7))
    other = synthesize(config, 2, generator=seeded(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_samples_of_a_batch_differ():
    image, label = synthesize(SynthesisConfig.from_preset("paper", dim=2, size=64), 2, generator=seeded(0))
    assert not torch.equal(label[0], label[1]) and not torch.equal(image[0], image[1])


def test_streams_differ_per_rank_and_resume_exactly():
    config = SynthesisConfig.from_preset("official", dim=2, size=32)
    rank0, rank1 = SyntheticStream(config, 2, seed=3, rank=0), SyntheticStream(config, 2, seed=3, rank=1)
    assert not torch.equal(next(rank0)[1], next(rank1)[1])
    same_again = SyntheticStream(config, 2, seed=3, rank=1)
    assert torch.equal(next(iter(same_again))[1], next(SyntheticStream(config, 2, seed=3, rank=1))[1])

    original = SyntheticStream(config, 2, seed=3, rank=1)
    next(original)
    state = original.state_dict()
    expected = [next(original)[1] for _ in range(2)]
    resumed = SyntheticStream(config, 2, seed=3, rank=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[1], batch) for batch in expected)


def _appearance_only(config: SynthesisConfig) -> SynthesisConfig:
    """The preset's intensity model with bias, global noise and blur switched off."""
    return dataclasses.replace(config, bias_std_range=(0.0, 0.0), noise_std_range=(0.0, 0.0),
                               blur_sigma_range=(0.0, 0.0), background_std_range=(0.0, 0.0))


def _largest_within_class_std(image, label, classes) -> float:
    return max(float(image[0, 0][label[0] == c].std()) for c in range(classes) if (label[0] == c).sum() > 1)


def test_official_has_no_per_class_std_and_paper_has():
    official = _appearance_only(SynthesisConfig.from_preset("official", dim=2, size=64, num_classes=4))
    paper = _appearance_only(SynthesisConfig.from_preset("paper", dim=2, size=64, num_classes=4))
    assert _largest_within_class_std(*synthesize(official, 1, generator=seeded(1)), 4) < 1e-5
    assert _largest_within_class_std(*synthesize(paper, 1, generator=seeded(1)), 4) > 1e-3


def _identical_neighbour_slices(volume: torch.Tensor) -> int:
    return int((volume[..., 1:] == volume[..., :-1]).flatten(0, -2).all(0).sum())


def test_paper_thick_slices_make_constant_slabs_along_z_only_in_the_image():
    config = SynthesisConfig.from_preset("paper", dim=3, size=32)
    config = dataclasses.replace(config, slice_thickness_range=(4.0, 4.0))
    image, label = synthesize(config, 1, generator=seeded(2))
    # 8 slabs of 4 slices: 24 of the 31 neighbouring pairs are identical
    assert _identical_neighbour_slices(image[0, 0]) == 24
    assert _identical_neighbour_slices(label[0]) < 4
    official = SynthesisConfig.from_preset("official", dim=3, size=32)
    official_image, _ = synthesize(official, 1, generator=seeded(2))
    assert _identical_neighbour_slices(official_image[0, 0]) == 0


def test_statistics_on_a_known_label():
    label = torch.tensor([[[0, 0, 1, 1]] * 4, [[2] * 4] * 4])  # two 4x4 samples
    assert surface_to_volume(label).tolist() == [4 / 16, 0.0]  # one vertical boundary of 4 faces
    assert class_volume_fractions(label, 4).tolist() == [[0.5, 0.5, 0, 0], [0, 0, 1, 0]]
    assert empty_class_fraction(label, 4).tolist() == [0.5, 0.75]


@pytest.mark.parametrize("preset", PRESETS)
def test_deformation_increases_boundary_complexity(preset):
    config = SynthesisConfig.from_preset(preset, dim=2, size=128, num_classes=8)
    flat = dataclasses.replace(config, deformation_std_range=(0.0, 0.0))
    deformed = surface_to_volume(synthesize(config, 16, generator=seeded(4))[1]).mean()
    undeformed = surface_to_volume(synthesize(flat, 16, generator=seeded(4))[1]).mean()
    assert deformed > 1.3 * undeformed


def test_lattice_evaluation_stays_close_to_the_exact_one():
    config = SynthesisConfig.from_preset("official", dim=2, size=256)
    assert config.mask_lattice_spacing == 1  # a sixteenth of the finest scale: exact at this size
    # k = 2 is an eighth of the finest scale here, twice as coarse (relative to the structures)
    # as the 2D preset's 2 at 512^2
    config = dataclasses.replace(config, mask_lattice_spacing=2)
    exact = dataclasses.replace(config, mask_lattice_spacing=1)
    fast_label = synthesize(config, 8, generator=seeded(5))[1]
    exact_label = synthesize(exact, 8, generator=seeded(5))[1]  # the same draws, every pixel exact
    assert (fast_label == exact_label).double().mean() > 0.97
    ratio = surface_to_volume(fast_label).mean() / surface_to_volume(exact_label).mean()
    assert 0.93 < ratio <= 1.0  # interpolating between lattice points can only smooth


def test_fast_path_statistics_match_the_released_algorithm():
    config = SynthesisConfig.from_preset("official", dim=2, size=256, num_classes=16)
    config = dataclasses.replace(config, mask_lattice_spacing=2)  # coarser than the 2D preset's (see above)
    samples = 40  # enough for every statistic to sit well inside its tolerance
    image, label = synthesize(config, samples, generator=seeded(6))
    reference = [reference_sample(config.size, config.num_classes, seeded(100 + i)) for i in range(samples)]
    ref_image = torch.cat([pair[0] for pair in reference])
    ref_label = torch.cat([pair[1] for pair in reference])
    rows = compare(summarize(image, label, 16), summarize(ref_image, ref_label, 16))
    assert all(row["ok"] for row in rows), [row for row in rows if not row["ok"]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "at least two classes"),
    (dict(size=(64, 20)), "too small for the coarsest noise scale"),
    (dict(size=8), "too small for the presets"),
    (dict(size=(64, 64, 64)), "size must be one positive integer or 2"),
])
def test_bad_preset_arguments_are_explained(kwargs, message):
    with pytest.raises(RasdValueError, match=message):
        SynthesisConfig.from_preset("official", **{"dim": 2, **kwargs})


def test_bad_config_values_are_explained():
    config = SynthesisConfig.from_preset("paper", dim=2, size=64)
    with pytest.raises(RasdValueError, match="unknown synthesis preset 'nope'"):
        SynthesisConfig.from_preset("nope")
    with pytest.raises(RasdValueError, match="class_std_range must not be negative"):
        dataclasses.replace(config, class_std_range=(-0.1, 0.1))
    with pytest.raises(RasdValueError, match="low <= high"):
        dataclasses.replace(config, blur_sigma_range=(1.0, 0.5))
    with pytest.raises(RasdValueError, match="batch_size"):
        synthesize(config, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_unavailable_device_is_explained():
    config = SynthesisConfig.from_preset("official", dim=2, size=32)
    with pytest.raises(RasdValueError, match="CUDA is not available"):
        synthesize(config, 1, device="cuda")
    with pytest.raises(RasdValueError, match="unknown device"):
        synthesize(config, 1, device="tpu-ish")


@pytest.mark.parametrize("dim, size", [(2, (64, 48)), (3, (24, 32, 16))])
def test_exact_lattice_equals_the_released_full_resolution_warp(dim, size):
    """k = 1 evaluates every voxel: it must equal the released algorithm run on the same noise
    grids (upsampled with F.interpolate, warped with the released spatial transformer), which
    checks the separable interpolation, the identity folded into the deformation's noise grid and
    the released coordinate quirk. White-box: it replays the engine's draws in its order."""
    import torch.nn.functional as F

    from pretraining.bench_synth_reference import _warp
    from pretraining.synthesis.labels import draw_labels

    config = dataclasses.replace(
        SynthesisConfig.from_preset("official", dim=dim, size=size, num_classes=5), mask_lattice_spacing=1
    )
    batch, classes, mode = 2, 5, "bilinear" if dim == 2 else "trilinear"
    label = draw_labels(config, batch, seeded(3), torch.device("cpu"))

    generator = seeded(3)

    def upsampled(scales, std_range, channels):
        total = 0
        for scale in scales:
            std = torch.rand(batch, generator=generator) * (std_range[1] - std_range[0]) + std_range[0]
            grid = torch.randn(batch, classes, channels, *(s // scale for s in size), generator=generator)
            grid = grid * std.view(batch, *(1,) * (dim + 2))
            total = total + F.interpolate(grid.flatten(0, 1), size=size, mode=mode, align_corners=True)
        return total  # (batch * classes, channels, *size)

    heat = upsampled(config.heatmap_scales, config.heatmap_std_range, 1)
    flow = upsampled(config.deformation_scales, config.deformation_std_range, dim)
    flow = flow.flip(1)  # the engine's grid components are x-first; the released flow is axis-first
    expected = _warp(heat, flow).view(batch, classes, *size).argmax(1)
    assert (label == expected).double().mean() > 0.9999


def test_images_stay_finite_when_a_small_bias_field_has_no_positive_peak():
    # seed 123, sample 22: the blurred log-bias field is negative everywhere; the released
    # rescaling by its maximum then overflowed exp() and the sample came out all NaN
    config = SynthesisConfig.from_preset("official", dim=2, size=32, num_classes=6)
    image, _ = synthesize(config, 64, generator=seeded(123))
    assert torch.isfinite(image).all()
