"""The plugin's user-facing errors (all :class:`rasd_hub.errors.RasdError`, raised before training).

Weight errors (nothing published yet, missing or corrupted files, checksum mismatches) come from
rasd_hub itself, whose messages say how to fetch or produce the weights.
"""

from rasd_hub.errors import RasdValueError


class WeightsDimensionError(RasdValueError):
    """2D weights for a 3D nnU-Net configuration, or the reverse."""


class PatchTooSmallError(RasdValueError):
    """nnU-Net's planned patch is smaller than the architecture's minimum input size."""
