"""nnU-Net's Residual Encoder U-Net (``dynamic_network_architectures``), as rasd_hub models.

The classes subclass ``ResidualEncoderUNet`` without adding modules, so the state-dict keys are
exactly those of the network nnU-Net builds from ResEnc plans and nnssl pre-trains: weights move
between rasd_hub, nnU-Net and nnssl without renaming. The operators are fixed to the ones nnU-Net
plans for this network (instance norm with affine, leaky ReLU, conv bias, no dropout); the
stage layout is the constructor's (typed) arguments.

For RaSD pre-training the network's output is the dense embedding PDL needs: ``out_channels``
(32, as the released code) from the decoder's full-resolution stage, deep supervision off. When
fine-tuned, nnU-Net replaces the segmentation layer of every decoder stage (``decoder.seg_layers``,
the "head") and keeps its deep supervision.

Instance normalisation after the first convolution does not make the network indifferent to the
input intensities: zero padding at the borders and every skip connection see them (min-max scaled
and z-scored images gave outputs up to 45 % apart), so the weights' ``normalization`` applies as
for the other models.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch.utils.checkpoint import checkpoint

from rasd_hub._registry import register_model
from rasd_hub._validate import ArgSpec
from rasd_hub.errors import RasdValueError
from rasd_hub.models._base import FeatureInfo, RasdModelMixin, finalize

__all__ = ["RasdResEncUNet", "RasdResEncUNetEncoder", "rasd2d_resencl", "rasd3d_resencl",
           "rasd2d_resenc_small", "rasd3d_resenc_small"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_NORM_KWARGS = {"eps": 1e-5, "affine": True}
_NONLIN_KWARGS = {"inplace": True}


def _stage_args(spatial_dims: int, features_per_stage: Sequence[int], strides: Sequence[int],
                kernel_sizes: Sequence[int] | int, n_blocks_per_stage: Sequence[int],
                n_conv_per_stage_decoder: Sequence[int] | None) -> dict:
    """Check the stage layout (one clear error per field) and return it as lists (the decoder:
    one convolution per stage unless given, as nnU-Net's ResEnc planners)."""
    if spatial_dims not in (2, 3):
        raise RasdValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    n = len(features_per_stage)
    kernels = [kernel_sizes] * n if isinstance(kernel_sizes, int) else list(kernel_sizes)
    for field, values in (("strides", strides), ("kernel_sizes", kernels),
                          ("n_blocks_per_stage", n_blocks_per_stage)):
        if len(values) != n:
            raise RasdValueError(
                f"{field} needs one value per stage ({n} stages from features_per_stage), got "
                f"{list(values)}")
    decoder = [1] * (n - 1) if n_conv_per_stage_decoder is None else [
        int(c) for c in n_conv_per_stage_decoder]
    if len(decoder) != n - 1:
        raise RasdValueError(
            f"n_conv_per_stage_decoder needs {n - 1} values (one fewer than the {n} stages), "
            f"got {decoder}")
    return dict(features_per_stage=[int(f) for f in features_per_stage],
                strides=[int(s) for s in strides], kernel_sizes=[int(k) for k in kernels],
                n_blocks_per_stage=[int(b) for b in n_blocks_per_stage],
                n_conv_per_stage_decoder=decoder)


class _ResEncInterface(RasdModelMixin):
    """What rasd_hub needs from both the full network and its encoder (see ``finalize``), and
    timm's interface (:class:`~rasd_hub.models._base.RasdModelMixin`)."""

    #: every decoder stage's segmentation layer: replaced as a whole when num_classes changes
    head_prefix = "decoder.seg_layers"
    stem_keys = ["encoder.stem.convs.0.conv.weight"]

    def _record(self, model_args: dict) -> None:
        self.model_args = model_args
        self.spatial_dims = model_args["spatial_dims"]
        self.input_divisor = math.prod(model_args["strides"])
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder stage's activations in the backward pass (when training)."""
        self.grad_checkpointing = bool(enable)

    def _encode(self, encoder: ResidualEncoder, x: torch.Tensor) -> list[torch.Tensor]:
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled() and self.training
        run = (lambda block, t: checkpoint(block, t, use_reentrant=False)) if use_ckpt else (
            lambda block, t: block(t))
        x = run(encoder.stem, x)
        skips = []
        for stage in encoder.stages:
            x = run(stage, x)
            skips.append(x)
        return skips

    def encoder_info(self) -> list[dict[str, Any]]:
        """``num_chs`` / ``reduction`` / ``module`` of each encoder stage's output."""
        a = self.model_args
        reductions = [math.prod(a["strides"][:i + 1]) for i in range(len(a["strides"]))]
        return [dict(num_chs=c, reduction=r, module=f"encoder.stages.{i}")
                for i, (c, r) in enumerate(zip(a["features_per_stage"], reductions))]

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each encoder stage's output, full resolution first."""
        return self._encode(self.encoder, x)

    def _new_head(self, num_classes: int) -> nn.Module:
        """Every decoder stage's segmentation layer, for ``num_classes`` outputs."""
        conv = _CONV[self.spatial_dims]
        layers = nn.ModuleList([conv(layer.in_channels, num_classes, 1, 1, 0, bias=True)
                                for layer in self.decoder.seg_layers])
        self.decoder.seg_layers = layers
        self.decoder.num_classes = num_classes
        return layers

    def dynamic_network_kwargs(self) -> dict[str, Any]:
        """The ``arch_kwargs`` nnU-Net's plans (and nnssl's adaptation plan) give this network,
        with ``ResidualEncoderUNet`` as ``network_class_name``; ``arch_kwargs_requiring_import``
        is ``_KW_REQUIRING_IMPORT``."""
        a, d = self.model_args, self.model_args["spatial_dims"]
        return {
            "n_stages": len(a["features_per_stage"]),
            "features_per_stage": list(a["features_per_stage"]),
            "conv_op": f"torch.nn.modules.conv.{_CONV[d].__name__}",
            "kernel_sizes": [[k] * d for k in a["kernel_sizes"]],
            "strides": [[s] * d for s in a["strides"]],
            "n_blocks_per_stage": list(a["n_blocks_per_stage"]),
            "n_conv_per_stage_decoder": list(a.get("n_conv_per_stage_decoder", [])),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.{_NORM[d].__name__}",
            "norm_op_kwargs": dict(_NORM_KWARGS),
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": dict(_NONLIN_KWARGS),
        }


#: nnU-Net's ``_kw_requires_import`` for :meth:`dynamic_network_kwargs`
KW_REQUIRING_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")
NETWORK_CLASS_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


class RasdResEncUNet(_ResEncInterface, ResidualEncoderUNet):
    """Residual Encoder U-Net with nnU-Net's operators and a recorded, JSON-able configuration.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        out_channels: output channels of every decoder stage's segmentation layer: 32 for the
            pre-training embedding, or the class count.
        features_per_stage: feature channels per resolution stage, top first.
        strides: downsampling stride per stage (the first is 1 in nnU-Net's plans).
        kernel_sizes: convolution kernel size per stage (or one for all).
        n_blocks_per_stage: residual blocks per encoder stage.
        n_conv_per_stage_decoder: convolutions per decoder stage (one fewer entries than stages;
            default one each, as nnU-Net's ResEnc planners).
        deep_supervision: return every decoder stage's output (nnU-Net training) instead of the
            full-resolution one only.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 32,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 320, 320),
        strides: Sequence[int] = (1, 2, 2, 2, 2, 2),
        kernel_sizes: Sequence[int] | int = 3,
        n_blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6, 6),
        n_conv_per_stage_decoder: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        stages = _stage_args(spatial_dims, features_per_stage, strides, kernel_sizes,
                             n_blocks_per_stage, n_conv_per_stage_decoder)
        n = len(stages["features_per_stage"])
        super().__init__(
            in_channels, n, stages["features_per_stage"], _CONV[spatial_dims],
            stages["kernel_sizes"], stages["strides"], stages["n_blocks_per_stage"], out_channels,
            stages["n_conv_per_stage_decoder"], conv_bias=True, norm_op=_NORM[spatial_dims], norm_op_kwargs=dict(_NORM_KWARGS),
            nonlin=nn.LeakyReLU, nonlin_kwargs=dict(_NONLIN_KWARGS),
            deep_supervision=bool(deep_supervision),
        )
        self._record(dict(spatial_dims=spatial_dims, in_channels=in_channels,
                          out_channels=out_channels, **stages,
                          deep_supervision=bool(deep_supervision)))

    def forward(self, x: torch.Tensor):
        return self.decoder(self._encode(self.encoder, x))


class RasdResEncUNetEncoder(_ResEncInterface, nn.Module):
    """The encoder of :class:`RasdResEncUNet` (``features_only``): one feature map per stage.

    Its keys are the full network's ``encoder.*`` keys; the decoder's are dropped when loading.
    """

    #: state-dict prefixes of the full model that this encoder lacks (dropped when loading)
    dropped_prefixes = ("decoder.",)
    head_prefix = None

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 32,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 320, 320),
        strides: Sequence[int] = (1, 2, 2, 2, 2, 2),
        kernel_sizes: Sequence[int] | int = 3,
        n_blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6, 6),
        n_conv_per_stage_decoder: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        stages = _stage_args(spatial_dims, features_per_stage, strides, kernel_sizes,
                             n_blocks_per_stage, n_conv_per_stage_decoder)
        n = len(stages["features_per_stage"])
        self.encoder = ResidualEncoder(
            in_channels, n, stages["features_per_stage"], _CONV[spatial_dims],
            stages["kernel_sizes"], stages["strides"], stages["n_blocks_per_stage"],
            conv_bias=True, norm_op=_NORM[spatial_dims], norm_op_kwargs=dict(_NORM_KWARGS),
            nonlin=nn.LeakyReLU, nonlin_kwargs=dict(_NONLIN_KWARGS), return_skips=True,
        )
        self._record(dict(spatial_dims=spatial_dims, in_channels=in_channels,
                          out_channels=out_channels, **stages,
                          deep_supervision=bool(deep_supervision)))
        self.feature_info = FeatureInfo(self.encoder_info())
        self.out_indices = list(range(len(self.feature_info)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self._encode(self.encoder, x)
        return [feats[i] for i in self.out_indices]


def _resenc(name: str, defaults: dict, features_only: bool, out_indices, kwargs: dict):
    args = dict(defaults)
    args.update(kwargs)
    cls = RasdResEncUNetEncoder if features_only else RasdResEncUNet
    return finalize(cls(**args), name, features_only, out_indices)


def _resenc_check(args: dict):
    n = len(args.get("features_per_stage", ())) or None
    kernels = args.get("kernel_sizes", 3)
    if not (isinstance(kernels, int) and not isinstance(kernels, bool) and 1 <= kernels <= 7 or
            isinstance(kernels, list) and all(isinstance(k, int) and not isinstance(k, bool)
                                              and 1 <= k <= 7 for k in kernels)):
        return "kernel_sizes", f"must be an odd-sized kernel 1..7 or one per stage, got {kernels!r}"
    for field in ("strides", "n_blocks_per_stage"):
        if n is not None and field in args and len(args[field]) != n:
            return field, f"needs one value per stage ({n}), got {len(args[field])}"
    decoder = args.get("n_conv_per_stage_decoder")
    if n is not None and decoder is not None and len(decoder) != n - 1:
        return "n_conv_per_stage_decoder", f"needs {n - 1} values, got {len(decoder)}"
    return None


def _resenc_params(args: dict) -> int:
    """Parameter count estimated from the arguments (within a factor 2; the tests check)."""
    d = int(args.get("spatial_dims", 3))
    kernels = args.get("kernel_sizes", 3)
    feats = [int(f) for f in args.get("features_per_stage", ())]
    blocks = [int(b) for b in args.get("n_blocks_per_stage", [1] * len(feats))]
    ks = [kernels] * len(feats) if isinstance(kernels, int) else kernels
    return sum(int(k) ** d * f * f * (2 * b + 3) for f, b, k in zip(feats, blocks, ks))


RESENC_SCHEMA = {
    "args": {
        "spatial_dims": ArgSpec("int", choices=(2, 3)),
        "in_channels": ArgSpec("int", low=1, high=1024),
        "out_channels": ArgSpec("int", low=1, high=65536),
        "features_per_stage": ArgSpec("int_list", low=1, high=16384, length=tuple(range(2, 11))),
        "strides": ArgSpec("int_list", low=1, high=4, length=tuple(range(2, 11))),
        "kernel_sizes": ArgSpec("any"),
        "n_blocks_per_stage": ArgSpec("int_list", low=0, high=64, length=tuple(range(2, 11))),
        "n_conv_per_stage_decoder": ArgSpec("int_list", low=1, high=16, length=tuple(range(1, 10))),
        "deep_supervision": ArgSpec("bool"),
    },
    "check": _resenc_check,
    "params": _resenc_params,
}


# nnssl's ResEnc-L (and nnU-Net's nnUNetResEncUNetLPlans for a 160^3 patch): 6 stages 32..320
_RESENCL_3D = dict(spatial_dims=3, features_per_stage=(32, 64, 128, 256, 320, 320),
                   strides=(1, 2, 2, 2, 2, 2), n_blocks_per_stage=(1, 3, 4, 6, 6, 6))
# what nnUNetPlannerResEncL plans for a 2D configuration with 512^2 patches: 8 stages, features
# capped at 512 (2D), the same block counts continued with 6
_RESENCL_2D = dict(spatial_dims=2, features_per_stage=(32, 64, 128, 256, 512, 512, 512, 512),
                   strides=(1, 2, 2, 2, 2, 2, 2, 2), n_blocks_per_stage=(1, 3, 4, 6, 6, 6, 6, 6))
# CPU-sized: 5 stages at 1/2 (2D) and 1/4 (3D) of ResEnc-L's width, features capped as nnU-Net
# caps them, about as many parameters as rasd2d_small / rasd3d_small (1.6M / 1.2M)
_RESENC_SMALL_2D = dict(spatial_dims=2, features_per_stage=(16, 32, 64, 128, 128),
                        strides=(1, 2, 2, 2, 2), n_blocks_per_stage=(1, 1, 2, 2, 2))
_RESENC_SMALL_3D = dict(spatial_dims=3, features_per_stage=(8, 16, 32, 64, 64),
                        strides=(1, 2, 2, 2, 2), n_blocks_per_stage=(1, 1, 2, 2, 2))

_SOURCE = ("nnU-Net's ResidualEncoderUNet (dynamic_network_architectures, Apache-2.0); the "
           "layout nnssl pre-trains (github.com/MIC-DKFZ/nnssl)")
_SOURCE_SMALL = ("nnU-Net's ResidualEncoderUNet (dynamic_network_architectures, Apache-2.0); "
                 "rasd-hub's CPU-sized layout")
_LICENSE = "Apache-2.0 (dynamic_network_architectures network code)"


@register_model(
    args_schema=RESENC_SCHEMA, spatial_dims=3, num_params=102_373_920, input_divisor=32, input_size=(1, 160, 160, 160),
    source=_SOURCE, code_license=_LICENSE,
    description="ResEnc-L 3D (nnU-Net / nnssl): 6 stages 32-320 ch, 32-ch embedding",
)
def rasd3d_resencl(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdResEncUNet:
    """ResEnc-L 3D: nnssl's pre-training layout (6 stages, 32..320 features, blocks 1-3-4-6-6-6)."""
    return _resenc("rasd3d_resencl", _RESENCL_3D, features_only, out_indices, kwargs)


@register_model(
    args_schema=RESENC_SCHEMA, spatial_dims=2, num_params=140_077_728, input_divisor=128, input_size=(1, 512, 512),
    source=_SOURCE, code_license=_LICENSE,
    description="ResEnc-L 2D (nnU-Net's 2D ResEnc-L layout for 512^2): 8 stages 32-512 ch",
)
def rasd2d_resencl(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdResEncUNet:
    """ResEnc-L 2D: nnU-Net's ResEnc-L planner's 2D layout for 512x512 patches (8 stages)."""
    return _resenc("rasd2d_resencl", _RESENCL_2D, features_only, out_indices, kwargs)


@register_model(
    args_schema=RESENC_SCHEMA, spatial_dims=2, num_params=1_777_888, input_divisor=16, input_size=(1, 128, 128),
    source=_SOURCE_SMALL, code_license=_LICENSE,
    description="small 2D ResEnc U-Net 16-128 ch: pre-trains on a CPU in minutes",
)
def rasd2d_resenc_small(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdResEncUNet:
    """Small 2D Residual Encoder U-Net: 5 stages, 16..128 features (CPU-friendly)."""
    return _resenc("rasd2d_resenc_small", _RESENC_SMALL_2D, features_only, out_indices, kwargs)


@register_model(
    args_schema=RESENC_SCHEMA, spatial_dims=3, num_params=1_297_728, input_divisor=16, input_size=(1, 64, 64, 64),
    source=_SOURCE_SMALL, code_license=_LICENSE,
    description="small 3D ResEnc U-Net 8-64 ch: pre-trains on a CPU in minutes",
)
def rasd3d_resenc_small(features_only: bool = False, out_indices=None, **kwargs: Any) -> RasdResEncUNet:
    """Small 3D Residual Encoder U-Net: 5 stages, 8..64 features (CPU-friendly)."""
    return _resenc("rasd3d_resenc_small", _RESENC_SMALL_3D, features_only, out_indices, kwargs)
