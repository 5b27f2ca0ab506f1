"""Put nnU-Net's normalised intensities on the footing the RaSD weights were pre-trained on.

nnU-Net normalises every channel during preprocessing (``normalization_schemes`` in the plans):
z-score per image for MRI-like data (``ZScoreNormalization``), a dataset-wide clip + z-score for
CT (``CTNormalization``), [0, 1] for natural images, or nothing. The RaSD weights state what their
synthetic pre-training inputs looked like in ``config.json`` -> ``normalization``; rasd_hub's
models say per-image min-max into [0, 1].

Per-image min-max cannot be reproduced inside the network: sliding-window inference sees patches,
not images, and a patch's min/max differ from the image's. What can be matched exactly and
identically in training and inference is the first two moments. The plugin therefore maps each
channel with a fixed affine ``x * scale + shift`` chosen so that nnU-Net's output distribution
(mean 0, std 1 for z-score and CT) gets the mean and std of the pre-training inputs:

* weights ``method: zscore``: identity for z-score/CT channels (an exact match);
* weights ``method: minmax`` with ``range [lo, hi]``: ``mean`` and ``std`` from the config when it
  states them (the measured moments of the synthetic images), otherwise the centre of the range and
  a quarter of its width (about 95 % of a Gaussian's mass inside the range);
* channels nnU-Net already scaled to [0, 1] are left alone for min-max weights;
* ``NoNormalization`` channels keep raw values: no mapping is meaningful, the log says so.

Every decision is written to the training log, one line per channel.

The evaluation harness (``rasd eval``) feeds its networks through the same path, so that it
measures what the trainer trains: :func:`fit_nnunet_normalization` chooses each channel's scheme
as nnU-Net's planner does (its ``get_normalization_scheme``: channel ``CT`` -> ``CTNormalization``,
anything unknown -> ``ZScoreNormalization``), takes the CT intensity properties from the training
cases as nnU-Net's dataset fingerprint defines them, and runs nnU-Net's own normalisation classes;
:meth:`NnUNetNormalization.for_weights` then gives the network the trainer's
``x * scale + shift`` (:func:`map_channel`, applied by :class:`nnunet_plugin.network.MappedNetwork`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnunet_plugin.errors import UnknownNormalizationError
from rasd_hub.errors import RasdValueError

# nnU-Net scheme -> (mean, std) of the values it produces, as far as they are known.
_STANDARDISED = {"ZScoreNormalization": (0.0, 1.0), "CTNormalization": (0.0, 1.0)}
_UNIT_RANGE = {"RescaleTo01Normalization", "RGBTo01Normalization"}


@dataclass
class ChannelMapping:
    scale: float
    shift: float
    explanation: str
    matched: bool  # True when the inputs already were on the weights' footing


def target_moments(weights_normalization: dict | None) -> tuple[str, float, float, str]:
    """(method, mean, std, where the numbers come from) of the pre-training inputs."""
    norm = dict(weights_normalization or {})
    method = str(norm.get("method", "")).lower()
    if method == "zscore":
        return method, 0.0, 1.0, "z-score by definition"
    if method == "minmax":
        lo, hi = (float(v) for v in norm.get("range", (0.0, 1.0)))
        if "mean" in norm and "std" in norm:
            return method, float(norm["mean"]), float(norm["std"]), "measured moments in config.json"
        return method, (lo + hi) / 2, (hi - lo) / 4, (
            f"assumed from range [{lo:g}, {hi:g}] (config.json states no mean/std)")
    raise UnknownNormalizationError(
        f"the weights' config.json gives normalization method {norm.get('method')!r}; the plugin "
        "knows 'zscore' and 'minmax' (with range and optionally measured mean/std). Fix the "
        "weights' config.json or re-export them with `rasd hub export`.")


def map_channel(scheme: str, weights_normalization: dict | None) -> ChannelMapping:
    method, mean_t, std_t, origin = target_moments(weights_normalization)
    expects = f"the weights expect {method} inputs (mean {mean_t:g}, std {std_t:g}; {origin})"
    if scheme in _STANDARDISED:
        mean_s, std_s = _STANDARDISED[scheme]
        scale = std_t / std_s
        shift = mean_t - mean_s * scale
        matched = abs(scale - 1) < 1e-9 and abs(shift) < 1e-9
        if matched:
            return ChannelMapping(1.0, 0.0, f"nnU-Net {scheme} gives mean 0, std 1; {expects}: match",
                                  True)
        return ChannelMapping(scale, shift, (
            f"MISMATCH explained: nnU-Net {scheme} gives mean 0, std 1 but {expects}; the network "
            f"maps x -> {scale:g} * x + {shift:g} before the first layer so both have the same mean "
            "and std"), False)
    if scheme in _UNIT_RANGE:
        if method == "minmax":
            return ChannelMapping(1.0, 0.0, f"nnU-Net {scheme} scales to [0, 1]; {expects}: match",
                                  True)
        scale = std_t / 0.25
        shift = mean_t - 0.5 * scale
        return ChannelMapping(scale, shift, (
            f"MISMATCH explained: nnU-Net {scheme} scales to [0, 1] but {expects}; the network maps "
            f"x -> {scale:g} * x + {shift:g}"), False)
    return ChannelMapping(1.0, 0.0, (
        f"WARNING: nnU-Net {scheme} leaves intensities as they are while {expects}; no fixed "
        "mapping fits raw values, so the pre-trained features see unfamiliar inputs. Name the "
        "channel 'CT' (CT) or anything else (z-score) in dataset.json and re-run "
        "nnUNetv2_plan_and_preprocess to fix this."), False)


def plan_input_mapping(schemes: list[str], weights_normalization: dict | None) -> list[ChannelMapping]:
    """One :class:`ChannelMapping` per input channel of the configuration."""
    return [map_channel(s, weights_normalization) for s in schemes]


# ------------------------------------------------------------------ the harness's input path

CT_SCHEME = "CTNormalization"


def nnunet_scheme(channel_name: str) -> str:
    """The normalisation nnU-Net's planner gives a ``dataset.json`` channel name."""
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        get_normalization_scheme,
    )

    return get_normalization_scheme(channel_name).__name__


def _as_4d(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, x, y[, z]) image and (1, x, y[, z]) label: nnU-Net reads 2D cases as one-slice 3D."""
    if image.ndim != label.ndim + 1 or image.shape[1:] != label.shape:
        raise RasdValueError(f"an image of shape {image.shape} does not fit its label of shape "
                             f"{label.shape}; expected (C, *spatial) and (*spatial)")
    if label.ndim == 2:
        image, label = image[:, None], label[None]
    return image, label[None].astype(np.int16)  # a copy: nnU-Net's cropping writes into it


def _weighted_quantile(sorted_values: np.ndarray, cumulative: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total (inverted CDF)."""
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(sorted_values[min(index, len(sorted_values) - 1)])


def foreground_intensity_properties(train_images: Sequence[np.ndarray],
                                    train_labels: Sequence[np.ndarray]) -> list[dict]:
    """Per channel ``mean``, ``std``, ``median``, ``min``, ``max``, ``percentile_00_5`` and
    ``percentile_99_5`` of the training cases' foreground (label > 0), as nnU-Net's dataset
    fingerprint defines them.

    nnU-Net crops each case to its non-zero region and draws the same number of foreground voxels
    from every case (10^8 in all, with replacement), so each case weighs the same whatever its
    size; it then takes the statistics of the pooled draws. Those draws estimate the statistics of
    the equal-weight mixture of the cases' foreground intensities, which this computes exactly from
    every foreground voxel (10^8 draws per harness run would cost seconds and gigabytes for no
    difference beyond nnU-Net's own sampling noise).
    """
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    if not train_images or len(train_images) != len(train_labels):
        raise RasdValueError(f"need one label per training image, got {len(train_images)} images "
                             f"and {len(train_labels)} labels")
    per_case = []  # (C, foreground voxels) of each case with foreground
    for image, label in zip(train_images, train_labels):
        image, label = _as_4d(np.asarray(image, np.float32), np.asarray(label))
        image, label, _ = crop_to_nonzero(image, label)
        foreground = label[0] > 0
        if foreground.any():
            per_case.append(image[:, foreground].astype(np.float64))
    if not per_case:
        raise RasdValueError(
            "the training cases have no foreground voxels, so a CT channel's window (nnU-Net's "
            "CTNormalization uses the training foreground's percentiles, mean and std) cannot be "
            "computed; use training cases with labelled structures")
    weights = np.concatenate([np.full(v.shape[1], 1.0 / v.shape[1]) for v in per_case])
    properties = []
    for c in range(per_case[0].shape[0]):
        values = np.concatenate([v[c] for v in per_case])
        mean = float(np.average(values, weights=weights))
        std = float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))
        order = np.argsort(values, kind="stable")
        ranked, cumulative = values[order], np.cumsum(weights[order])
        properties.append({
            "mean": mean, "median": _weighted_quantile(ranked, cumulative, 0.5), "std": std,
            "min": float(ranked[0]), "max": float(ranked[-1]),
            "percentile_99_5": _weighted_quantile(ranked, cumulative, 0.995),
            "percentile_00_5": _weighted_quantile(ranked, cumulative, 0.005)})
    return properties


@dataclass
class NnUNetNormalization:
    """nnU-Net's normalisation of each input channel, as its preprocessor applies it.

    ``intensity_properties[c]`` is the training foreground's fingerprint for channels that need
    it (``CTNormalization``), else empty. Masked z-scoring (nnU-Net's ``use_mask_for_norm``, for
    images that cropping to the non-zero region shrinks to under 3/4) is not reproduced: the
    harness neither crops nor masks, which is what nnU-Net plans for images without a zero border.
    """

    channel_names: list[str]
    schemes: list[str]
    intensity_properties: list[dict]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """A (C, *spatial) image normalised channel by channel; float32, the input is untouched."""
        from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

        if image.shape[0] != len(self.schemes):
            raise RasdValueError(f"an image with {image.shape[0]} channels for a normalisation of "
                                 f"{len(self.schemes)} channels ({self.channel_names})")
        out = np.empty(image.shape, np.float32)
        for c, (scheme, properties) in enumerate(zip(self.schemes, self.intensity_properties)):
            normalizer = getattr(schemes, scheme)(use_mask_for_norm=False,
                                                  intensityproperties=properties)
            # nnU-Net's classes work in place on float32 input: hand them a copy
            out[c] = normalizer.run(image[c].astype(np.float32, copy=True))
        return out

    def describe_channel(self, c: int) -> str:
        name, scheme = self.channel_names[c], self.schemes[c]
        if scheme != CT_SCHEME:
            return f"channel {c} ({name}): nnU-Net {scheme}"
        p = self.intensity_properties[c]
        return (f"channel {c} ({name}): nnU-Net {scheme}, clip to [{p['percentile_00_5']:.1f}, "
                f"{p['percentile_99_5']:.1f}] then (x - {p['mean']:.1f}) / {p['std']:.1f} "
                "(training foreground)")

    def for_weights(self, weights_normalization: dict | None) -> "InputPath":
        """These channels on the footing of weights pre-trained with ``weights_normalization``."""
        return InputPath(self, plan_input_mapping(self.schemes, weights_normalization))


def fit_nnunet_normalization(channel_names: dict[str, str], train_images: Sequence[np.ndarray],
                             train_labels: Sequence[np.ndarray]) -> NnUNetNormalization:
    """nnU-Net's scheme for each ``dataset.json`` channel name, with CT intensity properties
    from the training cases only (nothing about the test cases reaches training)."""
    names = [str(channel_names[str(c)]) for c in range(len(channel_names))]
    schemes = [nnunet_scheme(n) for n in names]
    needs_fingerprint = CT_SCHEME in schemes
    properties = (foreground_intensity_properties(train_images, train_labels)
                  if needs_fingerprint else [{} for _ in names])
    return NnUNetNormalization(names, schemes, [p if s == CT_SCHEME else {}
                                                for p, s in zip(properties, schemes)])


@dataclass
class InputPath:
    """nnU-Net's normalisation (data side) and the trainer's mapping onto the weights (network
    side): what a network fine-tuned by ``RaSDTrainer`` sees, for the harness."""

    normalization: NnUNetNormalization
    mappings: list[ChannelMapping]

    def network(self, net):
        """``net`` behind the mapping, as :class:`~nnunet_plugin.network.RaSDNetwork` has it."""
        from nnunet_plugin.network import MappedNetwork

        return MappedNetwork(net, [m.scale for m in self.mappings], [m.shift for m in self.mappings])

    def describe(self) -> str:
        return "; ".join(f"{self.normalization.describe_channel(c)}, then {m.explanation}"
                         for c, m in enumerate(self.mappings))
