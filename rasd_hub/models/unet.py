"""RaSD UNets: MONAI :class:`~monai.networks.nets.UNet` (2D default model and the small variants).

The classes subclass MONAI's UNet without adding modules, so the state-dict keys are MONAI's
(``model.0.*`` ... ) and the released ``RaSE_2D.pth`` loads into ``rasd2d`` without renaming.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch.utils.checkpoint import checkpoint

from rasd_hub._registry import register_model
from rasd_hub._validate import ArgSpec
from rasd_hub.models._base import FeatureInfo, RasdModelMixin, finalize

__all__ = ["RasdUNet", "RasdUNetEncoder", "UPSAMPLE", "rasd2d", "rasd2d_small", "rasd3d_small"]

#: how a decoder block upsamples: MONAI's transposed convolution (the released networks), or
#: interpolation followed by a stride-1 convolution (no checkerboard artefacts)
UPSAMPLE = ("transposed", "nearest", "linear")


class RasdUNet(RasdModelMixin, UNet):
    """MONAI residual UNet that records its arguments and supports gradient checkpointing.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        out_channels: output channels: 32 for the pre-training embedding, or the class count.
        channels: feature channels per level, top first (the last one is the bottleneck).
        strides: downsampling stride per level (``len(channels) - 1`` values).
        num_res_units: residual units per block (0 = plain convolutions).
        act: activation (MONAI name or ``[name, {args}]``).
        norm: normalisation (MONAI name or ``[name, {args}]``).
        dropout: dropout probability.
        upsample: ``transposed`` (MONAI's transposed convolution, the released layout),
            ``nearest`` or ``linear`` (interpolation by the stride, then a stride-1 convolution:
            no checkerboard texture; other state-dict keys, so other weights).
        head_channels: set, the top up-sampling block outputs this many channels (the
            embedding) and a 1x1 convolution ``head`` maps them to ``out_channels`` classes: what
            ``create_model(..., num_classes=N)`` builds, so fine-tuning keeps every pre-trained
            layer. None (the released layout, pre-training): the top block outputs
            ``out_channels`` itself.
        **kwargs: any other :class:`~monai.networks.nets.UNet` argument (JSON values only).
    """

    #: Without ``head_channels`` the top up-sampling block of MONAI's UNet ends in the output
    #: channels: it is the "head" (an instance with a 1x1 head says ``"head"``).
    head_prefix = "model.2"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 32,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 4,
        act: str | Sequence = "relu",
        norm: str | Sequence = "batch",
        dropout: float = 0.0,
        upsample: str = "transposed",
        head_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        if upsample not in UPSAMPLE:
            raise ValueError(f"upsample={upsample!r}: choose one of {', '.join(UPSAMPLE)}")
        self.upsample = upsample  # read by _get_up_layer, which MONAI's __init__ calls
        act = tuple(act) if isinstance(act, list) else act  # MONAI wants tuples, JSON gives lists
        norm = tuple(norm) if isinstance(norm, list) else norm
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels,
            out_channels=out_channels if head_channels is None else head_channels,
            channels=channels, strides=strides, num_res_units=num_res_units, act=act, norm=norm,
            dropout=dropout, **kwargs,
        )
        self.head: nn.Module | None = None
        self.model_args = dict(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            channels=list(channels), strides=list(strides), num_res_units=num_res_units, act=act,
            norm=norm, dropout=dropout, **kwargs,
        )
        # absent by default: configs of the released layout unchanged
        if upsample != "transposed":
            self.model_args["upsample"] = upsample
        if head_channels is not None:
            self._new_head(out_channels, head_channels)
        self.spatial_dims = spatial_dims
        self.input_divisor = math.prod(int(s) for s in strides)
        self.grad_checkpointing = False

    @property
    def stem_keys(self) -> list[str]:
        """Weights that read the input image (adapted when ``in_chans`` changes)."""
        if self.num_res_units == 0:
            return ["model.0.conv.weight"]
        keys = ["model.0.conv.unit0.conv.weight"]
        if getattr(self.model[0].residual, "weight", None) is not None:  # 1x1/strided conv
            keys.append("model.0.residual.weight")
        return keys

    def encoder_info(self) -> list[dict[str, Any]]:
        """``num_chs`` / ``reduction`` / ``module`` of each down block's output and the bottleneck's."""
        names, prefix = [], "model"
        for _ in self.model_args["strides"]:
            names.append(prefix + ".0")
            prefix += ".1.submodule"
        names.append(prefix)
        reductions, r = [], 1
        for s in self.model_args["strides"]:
            r *= int(s)
            reductions.append(r)
        reductions.append(r)
        return [dict(num_chs=int(c), reduction=red, module=m)
                for c, red, m in zip(self.model_args["channels"], reductions, names)]

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each down block and of the bottleneck, top first."""
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled() and self.training
        levels, bottom = self._levels()
        feats = []
        for block in [down for down, _ in levels] + [bottom]:
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
            feats.append(x)
        return feats

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        if self.upsample == "transposed":
            return super()._get_up_layer(in_channels, out_channels, strides, is_top)
        mode = self.upsample if self.upsample == "nearest" else ("bilinear", "trilinear")[self.dimensions - 2]
        common = dict(act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
                      adn_ordering=self.adn_ordering)
        layers: list[nn.Module] = [
            nn.Upsample(scale_factor=strides, mode=mode),
            Convolution(self.dimensions, in_channels, out_channels, strides=1,
                        kernel_size=self.up_kernel_size, conv_only=is_top and self.num_res_units == 0,
                        **common)]
        if self.num_res_units > 0:
            layers.append(ResidualUnit(self.dimensions, out_channels, out_channels, strides=1,
                                       kernel_size=self.kernel_size, subunits=1,
                                       last_conv_only=is_top, **common))
        return nn.Sequential(*layers)

    def _new_head(self, num_classes: int, head_channels: int | None = None) -> nn.Module:
        """A fresh 1x1 convolution to ``num_classes`` on the top block's output, which is kept
        (timm's ``reset_classifier``: the features stay, the classifier is new). A network
        without a head gets one on its ``out_channels``-wide output."""
        if head_channels is None:
            head_channels = self.model_args.get("head_channels", self.model_args["out_channels"])
        self.head = (nn.Conv2d, nn.Conv3d)[self.dimensions - 2](head_channels, num_classes, 1)
        self.head_prefix = "head"
        self.model_args["head_channels"] = head_channels
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each down/up block's activations in the backward pass (when training).

        Implemented by walking MONAI's nested ``Sequential(down, SkipConnection(...), up)``
        blocks in :meth:`forward`, so the state-dict keys stay unchanged.
        """
        self.grad_checkpointing = bool(enable)

    def _levels(self) -> tuple[list[tuple[nn.Module, nn.Module]], nn.Module]:
        """[(down, up)] top to bottom, and the bottleneck block."""
        levels, node = [], self.model
        while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
            levels.append((node[0], node[2]))
            node = node[1].submodule
        return levels, node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled() and self.training):
            x = self.model(x)
        else:
            levels, bottom = self._levels()
            skips = []
            for down, _ in levels:
                x = checkpoint(down, x, use_reentrant=False)
                skips.append(x)
            x = checkpoint(bottom, x, use_reentrant=False)
            for (_, up), skip in zip(reversed(levels), reversed(skips)):
                x = checkpoint(up, torch.cat([skip, x], dim=1), use_reentrant=False)
        return x if self.head is None else self.head(x)


class RasdUNetEncoder(RasdUNet):
    """The down path of :class:`RasdUNet` returning one feature map per level (``features_only``).

    Returns the output of each down block and of the bottleneck, top first (those at
    ``out_indices``); channels are ``channels`` and reductions the running product of ``strides``
    (the bottleneck keeps the last reduction). The up blocks are replaced by parameter-free
    identities, so the keys are a subset of the full model's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        node, prefix = self.model, "model"
        #: state-dict prefixes of the full model that this encoder lacks (dropped when loading)
        self.dropped_prefixes: tuple[str, ...] = ()
        while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
            node[2] = nn.Identity()
            self.dropped_prefixes += (prefix + ".2.",)
            prefix += ".1.submodule"
            node = node[1].submodule
        if self.head is not None:
            self.head = None
            self.dropped_prefixes += ("head.",)
        self.feature_info = FeatureInfo(self.encoder_info())
        self.out_indices = list(range(len(self.feature_info)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        feats = self.encoder_features(x)
        return [feats[i] for i in self.out_indices]


def _unet(name: str, defaults: dict, features_only: bool, out_indices, num_classes: int | None,
          kwargs: dict) -> RasdUNet:
    args = dict(defaults)
    args.update(kwargs)
    if num_classes is not None:
        # a class head on the embedding: every layer of the (pre-trained) network is kept
        if args.get("head_channels") is None:
            args["head_channels"] = args["out_channels"]
        args["out_channels"] = num_classes
    cls = RasdUNetEncoder if features_only else RasdUNet
    return finalize(cls(**args), name, features_only, out_indices)


_ACTS = ("relu", "prelu", "leakyrelu", "gelu", "elu", "selu", "celu", "tanh", "sigmoid", "swish",
         "mish", "memswish", "gelu_tanh", "softmax", "logsoftmax", "relu6", "hardswish")
_NORMS = ("batch", "instance", "group", "layer", "localresponse", "syncbatch", "instance_nvfuser")


def _unet_check(args: dict):
    channels, strides = args.get("channels"), args.get("strides")
    if channels is not None and strides is not None and len(strides) != len(channels) - 1:
        return "strides", f"needs len(channels) - 1 = {len(channels) - 1} values, got {len(strides)}"
    return None


def _unet_params(args: dict) -> int:
    """Parameter count estimated from the arguments (within a factor 2 of the real one; the
    tests check), computed before anything is allocated."""
    dims = int(args.get("spatial_dims", 2))
    k = int(args.get("kernel_size", 3)) ** dims
    units = max(1, int(args.get("num_res_units", 0)))
    chans = [int(args.get("in_channels", 1)), *map(int, args.get("channels", ())),
             int(args.get("head_channels") or args.get("out_channels", 32))]
    total = 0
    for a, b in zip(chans[:-1], chans[1:]):
        total += k * (a * b + (units - 1) * b * b) * 2  # down and up paths
    return total


UNET_SCHEMA = {
    "args": {
        "spatial_dims": ArgSpec("int", choices=(2, 3)),
        "in_channels": ArgSpec("int", low=1, high=1024),
        "out_channels": ArgSpec("int", low=1, high=65536),
        "channels": ArgSpec("int_list", low=1, high=16384, length=(2, 3, 4, 5, 6, 7, 8)),
        "strides": ArgSpec("int_list", low=1, high=4, length=(1, 2, 3, 4, 5, 6, 7)),
        "num_res_units": ArgSpec("int", low=0, high=16),
        "act": ArgSpec("str", choices=_ACTS, pair=True),
        "norm": ArgSpec("str", choices=_NORMS, pair=True),
        "dropout": ArgSpec("float", low=0.0, high=1.0),
        "kernel_size": ArgSpec("int", low=1, high=7),
        "up_kernel_size": ArgSpec("int", low=1, high=7),
        "bias": ArgSpec("bool"),
        "upsample": ArgSpec("str", choices=UPSAMPLE),
        "head_channels": ArgSpec("int", low=1, high=65536),
        "adn_ordering": ArgSpec("str", choices=("nda", "nad", "dna", "dan", "and", "adn", "na", "an",
                                                "nd", "dn", "ad", "da", "n", "a", "d", "")),
    },
    "check": _unet_check,
    "params": _unet_params,
}


_RASD2D = dict(spatial_dims=2, in_channels=1, out_channels=32, channels=(64, 128, 256, 512, 1024),
               strides=(2, 2, 2, 2), num_res_units=4, act="relu", norm="batch", dropout=0.15)
# The small variants keep rasd2d's family (MONAI residual UNet, ReLU) but are 4-8x narrower with
# 2 residual units, and use instance norm: CPU pre-training runs at batch 1-2, where batch-norm
# statistics are noise, and nnU-Net (the fine-tuning target) uses instance norm as well.
_RASD2D_SMALL = dict(spatial_dims=2, in_channels=1, out_channels=32, channels=(16, 32, 64, 128, 256),
                     strides=(2, 2, 2, 2), num_res_units=2, act="relu", norm="instance", dropout=0.0)
_RASD3D_SMALL = dict(spatial_dims=3, in_channels=1, out_channels=32, channels=(8, 16, 32, 64, 128),
                     strides=(2, 2, 2, 2), num_res_units=2, act="relu", norm="instance", dropout=0.0)

_SOURCE_2D = ("MONAI UNet; the network the released downstream code loads RaSE_2D.pth into "
              "(github.com/yweibs/RaSD)")
_SOURCE_SMALL = "MONAI UNet; rasd-hub's CPU-sized variant (no released counterpart)"


@register_model(
    args_schema=UNET_SCHEMA, spatial_dims=2, num_params=51_177_536, input_divisor=16, input_size=(1, 512, 512), source=_SOURCE_2D,
    released_checkpoint="RaSE_2D.pth",
    description="RaSD-2D: MONAI residual UNet 64-1024 ch, batch norm, 32-ch embedding",
)
def rasd2d(features_only: bool = False, out_indices=None, num_classes: int | None = None,
           **kwargs: Any) -> RasdUNet:
    """RaSD-2D UNet (``RaSE_2D.pth`` layout): channels 64..1024, 4 residual units, batch norm."""
    return _unet("rasd2d", _RASD2D, features_only, out_indices, num_classes, kwargs)


@register_model(
    args_schema=UNET_SCHEMA, spatial_dims=2, num_params=1_643_024, input_divisor=16, input_size=(1, 128, 128), source=_SOURCE_SMALL,
    description="small 2D UNet 16-256 ch, instance norm: pre-trains on a CPU in minutes",
)
def rasd2d_small(features_only: bool = False, out_indices=None, num_classes: int | None = None,
                 **kwargs: Any) -> RasdUNet:
    """Small RaSD 2D UNet: channels 16..256, 2 residual units, instance norm (CPU-friendly)."""
    return _unet("rasd2d_small", _RASD2D_SMALL, features_only, out_indices, num_classes, kwargs)


@register_model(
    args_schema=UNET_SCHEMA, spatial_dims=3, num_params=1_243_336, input_divisor=16, input_size=(1, 64, 64, 64), source=_SOURCE_SMALL,
    description="small 3D UNet 8-128 ch, instance norm: pre-trains on a CPU in minutes",
    notes="a 3D UNet rather than a small Swin UNETR: at equal parameter count it ran ~5x faster "
          "per step on a 2-core CPU",
)
def rasd3d_small(features_only: bool = False, out_indices=None, num_classes: int | None = None,
                 **kwargs: Any) -> RasdUNet:
    """Small RaSD 3D UNet: channels 8..128, 2 residual units, instance norm (CPU-friendly)."""
    return _unet("rasd3d_small", _RASD3D_SMALL, features_only, out_indices, num_classes, kwargs)
