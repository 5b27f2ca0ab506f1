"""Pieces shared by the model files: the config every model carries and timm-style feature info."""

from __future__ import annotations

import json
from typing import Any

import torch.nn as nn

from rasd_hub.errors import RasdValueError

__all__ = ["FeatureInfo", "canonical_args", "finalize", "NORMALIZATION", "RASD_CONFIG_VERSION"]

RASD_CONFIG_VERSION = 1

#: The intensity normalisation every RaSD model expects: the synthetic pre-training images are
#: min-max scaled to [0, 1] (then gamma-augmented), so real images should be scaled the same way.
NORMALIZATION: dict[str, Any] = {
    "method": "minmax",
    "range": [0.0, 1.0],
    "description": "per image (x - min) / (max - min) into [0, 1], as the synthetic pre-training "
    "data; clip CT to a window first",
}


def canonical_args(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as JSON would return them (tuples become lists), or a clear error if not JSON-able.

    Model arguments are stored in ``config.json`` and in training checkpoints, so they must survive
    a JSON round trip unchanged; canonicalising up front makes a saved and a rebuilt config equal.
    """
    try:
        return json.loads(json.dumps(args))
    except TypeError as err:
        raise RasdValueError(
            f"model arguments must be JSON values (numbers, strings, lists, dicts) so that the "
            f"weights can be rebuilt from config.json: {err}"
        ) from None


class FeatureInfo:
    """Channels and reductions of the maps a ``features_only`` model returns (timm convention).

    Indexable like a list of dicts ``{"num_chs", "reduction", "module"}``; ``channels()`` and
    ``reduction()`` return lists, or one value for an index.
    """

    def __init__(self, info: list[dict[str, Any]]):
        self.info = [dict(i) for i in info]

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        if idx is None:
            return [i[key] for i in self.info]
        return self.info[idx][key]

    def __getitem__(self, idx):
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(channels={self.channels()}, reduction={self.reduction()})"


def finalize(model: nn.Module, architecture: str, features_only: bool) -> nn.Module:
    """Attach ``model.rasd_config`` (the contract in docs/architecture.md) and return the model.

    The model class provides ``model_args``, ``spatial_dims``, ``input_divisor``, ``head_prefix``
    and ``stem_keys``.
    """
    args = model.model_args
    model.rasd_config = {
        "config_version": RASD_CONFIG_VERSION,
        "architecture": architecture,
        "model_args": canonical_args(args),
        "features_only": bool(features_only),
        "spatial_dims": int(model.spatial_dims),
        "in_chans": int(args["in_channels"]),
        "out_channels": None if features_only else int(args["out_channels"]),
        "input_divisor": int(model.input_divisor),
        # instance norm at the bottleneck needs more than one voxel there
        "min_input_size": 2 * int(model.input_divisor),
        "head": None if features_only else model.head_prefix,
        "stem": list(model.stem_keys),
        "normalization": dict(NORMALIZATION),
    }
    if features_only:
        model.rasd_config["feature_channels"] = model.feature_info.channels()
        model.rasd_config["feature_reductions"] = model.feature_info.reduction()
    return model
