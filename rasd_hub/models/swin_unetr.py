"""RaSD 3D models: MONAI Swin UNETR v2 with the released RaSE_B/L/H layout.

The classes subclass :class:`monai.networks.nets.SwinUNETR` without adding modules, so their
state-dict keys are exactly MONAI's (``swinViT.*``, ``encoder1..4,10.*``, ``decoder1..5.*``,
``out.conv.conv.*``) and the released ``RaSE_*.pth`` state dicts load without renaming.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.nets import SwinUNETR

from rasd_hub._registry import register_model
from rasd_hub._validate import ArgSpec
from rasd_hub.models._base import FeatureInfo, RasdModelMixin, finalize

__all__ = ["RasdSwinUNETR", "RasdSwinUNETREncoder", "rasd3d_swinb", "rasd3d_swinl", "rasd3d_swinh"]


class RasdSwinUNETR(RasdModelMixin, SwinUNETR):
    """Swin UNETR (v2 by default) that records its arguments and supports timm-style helpers.

    Args:
        in_channels: input image channels (1 for the released weights).
        out_channels: output channels: 32 for the pre-training embedding, or the class count.
        feature_size: embedding width of the first Swin stage (48 = Swin-B in RaSD).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        use_v2: add the residual convolution block in front of each Swin stage (RaSD uses v2).
        patch_size: patch-embedding stride; spatial sizes must be multiples of ``patch_size ** 5``.
        spatial_dims: 3 (2 works too but is not a registered RaSD model).
        **kwargs: any other :class:`~monai.networks.nets.SwinUNETR` argument (JSON values only,
            so that the weights can be rebuilt from ``config.json``).
    """

    head_prefix = "out"

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 32,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        use_v2: bool = True,
        patch_size: int = 2,
        spatial_dims: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
            depths=depths, num_heads=num_heads, use_v2=use_v2, patch_size=patch_size,
            spatial_dims=spatial_dims, **kwargs,
        )
        self.model_args = dict(
            in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
            depths=list(depths), num_heads=list(num_heads), use_v2=use_v2, patch_size=patch_size,
            spatial_dims=spatial_dims, **kwargs,
        )
        self.spatial_dims = spatial_dims
        self.input_divisor = patch_size**5

    @property
    def stem_keys(self) -> list[str]:
        """Weights that read the input image (adapted when ``in_chans`` changes)."""
        keys = ["swinViT.patch_embed.proj.weight", "encoder1.layer.conv1.conv.weight"]
        if hasattr(self.encoder1.layer, "conv3"):  # 1x1 residual projection when in != feature
            keys.append("encoder1.layer.conv3.conv.weight")
        return keys

    def encoder_info(self) -> list[dict[str, Any]]:
        """``num_chs`` / ``reduction`` / ``module`` of the six maps the decoder consumes."""
        f, p = self.model_args["feature_size"], self.model_args["patch_size"]
        names = ["encoder1", "encoder2", "encoder3", "encoder4", "swinViT.layers4", "encoder10"]
        chans = [f, f, 2 * f, 4 * f, 8 * f, 16 * f]
        reds = [1, p, p * 2, p * 4, p * 8, p * 16]
        return [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(chans, reds, names)]

    def encoder_features(self, x_in: torch.Tensor) -> list[torch.Tensor]:
        """``encoder1(x)``, ``encoder2..4`` of Swin stages 0-2, Swin stage 3, ``encoder10`` of the
        bottleneck: full resolution first."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        hidden = self.swinViT(x_in, self.normalize)
        return [
            self.encoder1(x_in),
            self.encoder2(hidden[0]),
            self.encoder3(hidden[1]),
            self.encoder4(hidden[2]),
            hidden[3],
            self.encoder10(hidden[4]),
        ]

    def _new_head(self, num_classes: int) -> torch.nn.Module:
        from monai.networks.blocks import UnetOutBlock

        self.out = UnetOutBlock(spatial_dims=self.spatial_dims, in_channels=self.model_args["feature_size"],
                                out_channels=num_classes)
        return self.out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute Swin block activations in the backward pass (MONAI's ``use_checkpoint``)."""
        for module in self.modules():
            if module is not self and hasattr(module, "use_checkpoint"):
                module.use_checkpoint = bool(enable)
        self.grad_checkpointing = bool(enable)


class RasdSwinUNETREncoder(RasdSwinUNETR):
    """The encoder half of :class:`RasdSwinUNETR` returning multi-scale features (``features_only``).

    Returns the six maps the decoder consumes, full resolution first: ``encoder1(x)``,
    ``encoder2..4`` of Swin stages 0-2, Swin stage 3, and ``encoder10`` of the bottleneck, with
    channels ``f, f, 2f, 4f, 8f, 16f`` and reductions ``1, 2, 4, 8, 16, 32`` (``f`` =
    ``feature_size``, ``patch_size`` 2). Keys are a subset of the full model's, so full weights load
    after dropping the decoder.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dropped = ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out")
        for name in dropped:
            delattr(self, name)
        #: state-dict prefixes of the full model that this encoder lacks (dropped when loading)
        self.dropped_prefixes = tuple(name + "." for name in dropped)
        self.feature_info = FeatureInfo(self.encoder_info())
        self.out_indices = list(range(len(self.feature_info)))

    def forward(self, x_in: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        feats = self.encoder_features(x_in)
        return [feats[i] for i in self.out_indices]


_SOURCE = ("MONAI SwinUNETR(use_v2=True); key layout of the released RaSE_*.pth "
           "(github.com/yweibs/RaSD)")


def _swin(name: str, feature_size: int, features_only: bool, out_indices, kwargs: dict) -> RasdSwinUNETR:
    args = dict(in_channels=1, out_channels=32, feature_size=feature_size, depths=(2, 2, 2, 2),
                num_heads=(3, 6, 12, 24), use_v2=True)
    args.update(kwargs)
    cls = RasdSwinUNETREncoder if features_only else RasdSwinUNETR
    return finalize(cls(**args), name, features_only, out_indices)


def _swin_check(args: dict):
    f = args.get("feature_size", 48)
    if f % 12:
        return "feature_size", f"must be a multiple of 12 (MONAI Swin UNETR), got {f}"
    heads = args.get("num_heads", (3, 6, 12, 24))
    for i, h in enumerate(heads):
        if (f * 2**i) % h:
            return "num_heads", f"stage {i}: width {f * 2**i} is not divisible by {h} heads"
    return None


def _swin_params(args: dict) -> int:
    """Parameter count estimated from the arguments (within a factor 2; the tests check)."""
    f, dims = int(args.get("feature_size", 48)), int(args.get("spatial_dims", 3))
    k = 3 ** dims
    depths = args.get("depths", (2, 2, 2, 2))
    attention = sum(12 * int(d) * (f * 2**i) ** 2 for i, d in enumerate(depths))
    convs = sum(4 * k * c * c for c in (f, f, 2 * f, 4 * f, 8 * f, 16 * f))
    return attention + convs


SWIN_SCHEMA = {
    "args": {
        "in_channels": ArgSpec("int", low=1, high=1024),
        "out_channels": ArgSpec("int", low=1, high=65536),
        "feature_size": ArgSpec("int", low=12, high=4096),
        "depths": ArgSpec("int_list", low=1, high=64, length=(4,)),
        "num_heads": ArgSpec("int_list", low=1, high=256, length=(4,)),
        "use_v2": ArgSpec("bool"),
        "patch_size": ArgSpec("int", low=1, high=8),
        "spatial_dims": ArgSpec("int", choices=(2, 3)),
        "window_size": ArgSpec("int", low=1, high=32),
        "qkv_bias": ArgSpec("bool"),
        "mlp_ratio": ArgSpec("float", low=0.5, high=16.0),
        "norm_name": ArgSpec("str", choices=("instance", "batch", "group", "layer"), pair=True),
        "drop_rate": ArgSpec("float", low=0.0, high=1.0),
        "attn_drop_rate": ArgSpec("float", low=0.0, high=1.0),
        "dropout_path_rate": ArgSpec("float", low=0.0, high=1.0),
        "normalize": ArgSpec("bool"),
        "patch_norm": ArgSpec("bool"),
        "use_checkpoint": ArgSpec("bool"),
        "downsample": ArgSpec("str", choices=("merging", "mergingv2")),
    },
    "check": _swin_check,
    "params": _swin_params,
}


@register_model(
    args_schema=SWIN_SCHEMA, spatial_dims=3, num_params=72_763_538, input_divisor=32, input_size=(1, 128, 128, 128), source=_SOURCE,
    released_checkpoint="RaSE_B.pth",
    description="RaSD-3D base: Swin UNETR v2, Swin-B encoder (feature 48), 32-ch embedding",
)
def rasd3d_swinb(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdSwinUNETR:
    """RaSD-3D Swin UNETR-B (``RaSE_B.pth`` layout): feature size 48, depths 2-2-2-2, heads 3-6-12-24."""
    return _swin("rasd3d_swinb", 48, features_only, out_indices, kwargs)


@register_model(
    args_schema=SWIN_SCHEMA, spatial_dims=3, num_params=290_393_762, input_divisor=32, input_size=(1, 128, 128, 128), source=_SOURCE,
    released_checkpoint="RaSE_L.pth", pretrain_preset=None,
    description="RaSD-3D large: Swin UNETR v2, feature 96, 32-ch embedding",
    notes="feature_size 96 is our reading: the released code does not state RaSE_L's size",
)
def rasd3d_swinl(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdSwinUNETR:
    """RaSD-3D Swin UNETR-L (``RaSE_L.pth``): feature size 96 (our reading of the release)."""
    return _swin("rasd3d_swinl", 96, features_only, out_indices, kwargs)


@register_model(
    args_schema=SWIN_SCHEMA, spatial_dims=3, num_params=653_088_434, input_divisor=32, input_size=(1, 128, 128, 128), source=_SOURCE,
    released_checkpoint="RaSE_H.pth", pretrain_preset=None,
    description="RaSD-3D huge: Swin UNETR v2, feature 144, 32-ch embedding",
    notes="feature_size 144 is our reading: the released code does not state RaSE_H's size",
)
def rasd3d_swinh(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdSwinUNETR:
    """RaSD-3D Swin UNETR-H (``RaSE_H.pth``): feature size 144 (our reading of the release)."""
    return _swin("rasd3d_swinh", 144, features_only, out_indices, kwargs)
