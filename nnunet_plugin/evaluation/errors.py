"""Errors of the evaluation harness (all :class:`rasd_hub.errors.RasdError`)."""

from rasd_hub.errors import RasdError, RasdValueError


class DatasetLayoutError(RasdError):
    """A folder is not an nnU-Net raw dataset, or its files do not match its dataset.json."""


class SplitError(RasdValueError):
    """A train/test split (split.json, --train-cases) that cannot be honoured."""


class InitError(RasdValueError):
    """An initialisation that cannot be compared fairly with the others (e.g. another architecture)."""
