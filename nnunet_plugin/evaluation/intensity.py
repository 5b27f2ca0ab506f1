"""Scale intensities the way the weights were pre-trained, fitted on training cases only.

The weights' ``config.json`` -> ``normalization`` names the scaling (rasd_hub's models say
per-image min-max into [0, 1], "clip CT to a window first"):

* ``minmax``: CT channels (dataset.json channel name ``CT``) are clipped to a window, the 0.5 and
  99.5 percentiles of the training cases' foreground voxels (nnU-Net's CT window), then mapped
  window -> [0, 1]; other channels are mapped per image (x - min) / (max - min);
* ``zscore``: CT channels are clipped to the same window, then standardised with the training
  foreground's mean and std (nnU-Net's CTNormalization); other channels per image z-score.

The CT window uses training cases only, so nothing about the test split leaks into training.
A scratch init uses its architecture's ``normalization``, the same recipe as rasd_hub's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IntensityScaler", "fit_scaler"]

_EPS = 1e-8


@dataclass
class IntensityScaler:
    method: str  # "minmax" or "zscore"
    # per channel: None (per-image statistics) or (lo, hi, mean, std) of the CT window
    windows: list[tuple[float, float, float, float] | None]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Scale a (C, *spatial) image; returns float32."""
        out = np.empty_like(image, dtype=np.float32)
        for c, window in enumerate(self.windows):
            x = image[c].astype(np.float32)
            if window is not None:
                lo, hi, mean, std = window
                x = np.clip(x, lo, hi)
                x = (x - lo) / max(hi - lo, _EPS) if self.method == "minmax" else (x - mean) / max(std, _EPS)
            elif self.method == "minmax":
                x = (x - x.min()) / max(float(x.max() - x.min()), _EPS)
            else:
                x = (x - x.mean()) / max(float(x.std()), _EPS)
            out[c] = x
        return out

    def describe(self) -> str:
        parts = []
        for c, window in enumerate(self.windows):
            if window is None:
                parts.append(f"channel {c}: per-image {self.method}")
            else:
                parts.append(f"channel {c}: CT window [{window[0]:.1f}, {window[1]:.1f}] "
                             f"(training foreground) then {self.method}")
        return "; ".join(parts)


def fit_scaler(normalization: dict | None, channel_names: dict[str, str], train_images,
               train_labels) -> IntensityScaler:
    """Build the scaler for ``normalization`` (the weights' config) from the training cases."""
    method = str((normalization or {}).get("method", "minmax")).lower()
    if method not in ("minmax", "zscore"):
        method = "minmax"  # rasd_hub's documented default; unknown methods are not guessed at
    windows: list[tuple[float, float, float, float] | None] = []
    for c in range(len(channel_names)):
        if channel_names[str(c)].strip().upper() != "CT":
            windows.append(None)
            continue
        fg = np.concatenate([img[c][lab > 0].ravel() for img, lab in zip(train_images, train_labels)])
        if fg.size == 0:  # no foreground in the training cases: fall back to all their voxels
            fg = np.concatenate([img[c].ravel() for img in train_images])
        lo, hi = (float(v) for v in np.percentile(fg, [0.5, 99.5]))
        clipped = np.clip(fg, lo, hi)
        windows.append((lo, hi, float(clipped.mean()), float(clipped.std())))
    return IntensityScaler(method, windows)
