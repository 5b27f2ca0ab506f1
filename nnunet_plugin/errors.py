"""The plugin's user-facing errors (all :class:`rasd_hub.errors.RasdError`, raised before training).

Weight errors (nothing published yet, missing or corrupted files, checksum mismatches) come from
rasd_hub itself, whose messages say how to fetch or produce the weights.
"""

from rasd_hub.errors import RasdError, RasdValueError


class WeightsDimensionError(RasdValueError):
    """2D weights for a 3D nnU-Net configuration, or the reverse."""


class PatchTooSmallError(RasdValueError):
    """nnU-Net's planned patch is smaller than the architecture's minimum input size."""


class PlansError(RasdValueError):
    """The plans are not RaSD plans, are missing, or do not fit the dataset or checkpoint."""


class WeightsMismatchError(RasdError):
    """The weights found at training time are not the ones the plans name (other sha256 or
    architecture)."""


class UnknownNormalizationError(RasdValueError):
    """A weights config.json names an intensity normalisation the plugin cannot map onto."""
