"""Pieces shared by the model files: timm's model interface, feature info and the model config.

Every rasd model carries a frozen :class:`~rasd_hub._pretrained.PretrainedCfg` as
``model.pretrained_cfg`` and offers timm's interface: ``num_classes``, ``reset_classifier``,
``forward_features``, ``forward_intermediates``, ``set_grad_checkpointing`` (and ``features_only``
models ``feature_info`` with ``out_indices``). ``model.rasd_config`` is the same config as a dict
(a copy: change a model's config by replacing ``pretrained_cfg``, e.g. with
:func:`rasd_hub.set_normalization`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import torch
import torch.nn as nn

from rasd_hub._pretrained import PretrainedCfg
from rasd_hub._registry import get_arch
from rasd_hub.errors import RasdValueError

__all__ = ["FeatureInfo", "RasdModelMixin", "canonical_args", "finalize", "select_indices",
           "NORMALIZATION"]

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


def select_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``out_indices`` / ``indices``: None = all, an int ``k`` = the last ``k``, a sequence =
    those positions (negative ones count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise RasdValueError(f"indices={indices}: there are {n} feature maps (give 1..{n})")
        return list(range(n - indices, n))
    out = []
    for i in indices:
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise RasdValueError(f"index {i} is out of range: there are {n} feature maps "
                                 f"(0..{n - 1}, or negative from the end)")
        out.append(j)
    return out


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


class RasdModelMixin:
    """timm's model interface on the rasd models (dense-output ones and their encoders).

    Subclasses provide ``encoder_features(x) -> list`` (the encoder's maps, full resolution first),
    ``encoder_info() -> list[dict]`` (their ``num_chs`` / ``reduction`` / ``module``),
    ``_new_head(num_classes)`` and the attributes ``model_args``, ``spatial_dims``,
    ``input_divisor``, ``head_prefix``, ``stem_keys``.
    """

    pretrained_cfg: PretrainedCfg
    features_only: bool = False

    @property
    def rasd_config(self) -> dict[str, Any]:
        """The config as the ``rasd_config`` dict that ``config.json`` and checkpoints store.
        A copy: edits do not change the model (replace ``pretrained_cfg`` instead)."""
        return self.pretrained_cfg.rasd_config()

    @property
    def default_cfg(self) -> PretrainedCfg:  # timm's older name
        return self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        """Output channels of the dense head (0 for a ``features_only`` encoder)."""
        return 0 if self.features_only else int(self.model_args["out_channels"])

    @property
    def num_features(self) -> int:
        """Channels of :meth:`forward_features`' output (the deepest encoder map)."""
        return int(self.encoder_info()[-1]["num_chs"])

    def get_classifier(self) -> nn.Module | None:
        return None if self.features_only else self.get_submodule(self.head_prefix)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh output layer with ``num_classes`` channels (the rest keeps its weights)."""
        if self.features_only:
            raise RasdValueError("a features_only model has no classifier to reset")
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise RasdValueError(f"num_classes must be a positive integer, got {num_classes!r}; a "
                                 "dense model always has an output layer (use features_only=True "
                                 "for the encoder alone)")
        device = next(self.parameters()).device
        self._new_head(num_classes).to(device)
        self.model_args["out_channels"] = num_classes
        self.pretrained_cfg = dataclasses.replace(
            self.pretrained_cfg, num_classes=num_classes, classifier=self.head_prefix,
            model_args=canonical_args(self.model_args))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest encoder map (unpooled), what a classification head pools."""
        return self.encoder_features(x)[-1]

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, *,
        intermediates_only: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
        norm: bool = False,
    ):
        """timm's ``forward_intermediates``: the encoder maps at ``indices`` (None = all, ``k`` =
        the last ``k``) and, unless ``intermediates_only``, the final features
        (:meth:`forward_features`): ``(final, [maps])``. Maps are channels first (NCHW / NCDHW)."""
        if output_fmt not in ("NCHW", "NCDHW"):
            raise RasdValueError(f"output_fmt {output_fmt!r}: rasd models give channels-first maps only")
        feats = self.encoder_features(x)
        picked = [feats[i] for i in select_indices(len(feats), indices)]
        return picked if intermediates_only else (feats[-1], picked)

    def prune_intermediate_layers(self, *args, **kwargs):
        raise NotImplementedError("rasd models keep their decoder; use features_only=True for the encoder")


def finalize(model: nn.Module, architecture: str, features_only: bool,
             out_indices: Sequence[int] | int | None = None, **extra: Any) -> nn.Module:
    """Give a freshly built model its frozen ``pretrained_cfg`` (the contract in
    docs/architecture.md) and, for ``features_only``, the selected ``out_indices``."""
    spec = get_arch(architecture)
    args = model.model_args
    model.features_only = bool(features_only)
    if features_only:
        model.out_indices = select_indices(len(model.feature_info), out_indices)
        model.feature_info = FeatureInfo([model.feature_info[i] for i in model.out_indices])
    elif out_indices is not None:
        raise RasdValueError("out_indices needs features_only=True")
    divisor = int(model.input_divisor)
    model.pretrained_cfg = PretrainedCfg(
        architecture=architecture,
        model_args=canonical_args(args),
        features_only=bool(features_only),
        spatial_dims=int(model.spatial_dims),
        in_chans=int(args["in_channels"]),
        num_classes=0 if features_only else int(args["out_channels"]),
        input_size=(int(args["in_channels"]), *spec.input_size[1:]),
        input_divisor=divisor,
        # instance norm at the bottleneck needs more than one voxel there
        min_input_size=2 * divisor,
        first_conv=tuple(model.stem_keys),
        classifier=None if features_only else model.head_prefix,
        normalization=dict(NORMALIZATION),
        feature_channels=tuple(model.feature_info.channels()) if features_only else (),
        feature_reductions=tuple(model.feature_info.reduction()) if features_only else (),
        description=spec.description,
        **extra,
    )
    return model
