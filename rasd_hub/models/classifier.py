"""Classification on a rasd encoder: global average pooling and a linear layer (2D and 3D).

What the released downstream code does for its classification tasks (it wraps the 2D UNet
encoder for DRAC grading), in timm's form: ``create_model(name, pretrained=True, num_classes=K,
head="classifier")``; ``forward_features`` gives the deepest encoder map, ``forward_head`` pools
it and applies the layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.nn as nn

from rasd_hub.errors import RasdValueError
from rasd_hub.models._base import RasdModelMixin

__all__ = ["RasdClassifier"]


class RasdClassifier(nn.Module):
    """A ``features_only`` rasd encoder + global average pooling + dropout + ``Linear``.

    Args:
        encoder: a ``features_only`` model built by :func:`rasd_hub.create_model` (pre-trained or
            not); its deepest map (``feature_info[-1]``) is pooled.
        num_classes: outputs of the linear layer (logits).
        drop_rate: dropout before the linear layer.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if not getattr(encoder, "features_only", False):
            raise RasdValueError("RasdClassifier needs a features_only encoder "
                                 "(create_model(name, features_only=True))")
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise RasdValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.encoder = encoder
        self.spatial_dims = int(encoder.spatial_dims)
        self.input_divisor = encoder.input_divisor
        self.global_pool = nn.AdaptiveAvgPool3d(1) if self.spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(float(drop_rate))
        self.fc = nn.Linear(encoder.feature_info.channels(-1), num_classes)
        self.drop_rate = float(drop_rate)
        enc_cfg = encoder.pretrained_cfg
        self.pretrained_cfg = dataclasses.replace(
            enc_cfg, features_only=False, head="classifier", num_classes=num_classes,
            classifier="fc", first_conv=tuple("encoder." + k for k in enc_cfg.first_conv),
            feature_channels=(), feature_reductions=(),
            provenance=dict(enc_cfg.provenance, head_drop_rate=self.drop_rate) if self.drop_rate
            else enc_cfg.provenance)

    features_only = False
    rasd_config = RasdModelMixin.rasd_config
    default_cfg = RasdModelMixin.default_cfg

    @property
    def model_args(self) -> dict[str, Any]:
        return self.encoder.model_args

    @property
    def num_classes(self) -> int:
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    @property
    def stem_keys(self) -> list[str]:
        return ["encoder." + k for k in self.encoder.stem_keys]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear layer with ``num_classes`` outputs (0: none, ``forward`` gives the pooled
        features, as in timm)."""
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise RasdValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        device = self.fc.weight.device if isinstance(self.fc, nn.Linear) else None
        self.fc = nn.Linear(self.num_features, num_classes).to(device) if num_classes else nn.Identity()
        if num_classes:
            self.pretrained_cfg = dataclasses.replace(self.pretrained_cfg, num_classes=num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest encoder map, unpooled."""
        return self.encoder.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              **kwargs: Any):
        return self.encoder.forward_intermediates(x, indices, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
