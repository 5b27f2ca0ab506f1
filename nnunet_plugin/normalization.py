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
"""

from __future__ import annotations

from dataclasses import dataclass

from nnunet_plugin.errors import UnknownNormalizationError

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
