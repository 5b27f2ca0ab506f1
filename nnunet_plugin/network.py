"""The network RaSD plans describe: a rasd_hub model behind a fixed per-channel input mapping.

``rasd nnunet plan`` writes each configuration's ``architecture`` entry as

    {"network_class_name": "nnunet_plugin.network.RaSDNetwork",
     "arch_kwargs": {"rasd_architecture": ..., "rasd_model_args": {...},
                     "input_scale": [...], "input_shift": [...]},
     "_kw_requires_import": []}

which nnU-Net's own ``get_network_from_plans`` instantiates (``RaSDNetwork(input_channels=...,
num_classes=..., deep_supervision=..., **arch_kwargs)``), in training and in ``nnUNetv2_predict``
alike: no trainer override and no weights file are needed to rebuild it.

What a fold needs at inference travels in its checkpoint, because nnU-Net's predictor builds the
network once from the shared ``plans.json`` and then loads each fold's ``network_weights``:

* the input mapping is two **persistent** buffers, so every fold predicts with the mapping it was
  trained with (weights with other measured moments give another mapping);
* the weights the fold started from are the module's extra state (``get_extra_state``), which
  also checks that a checkpoint belongs to the architecture the plans describe.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from nnunet_plugin.errors import PlansError

__all__ = ["MappedNetwork", "RaSDNetwork", "NETWORK_CLASS", "architecture_entry", "is_rasd_architecture",
           "comparable_model_args", "has_deep_supervision"]

NETWORK_CLASS = "nnunet_plugin.network.RaSDNetwork"
#: model_args that create_model sets from the dataset (channels, classes), never from the plans
IO_ARGS = ("in_channels", "out_channels")
#: model_args nnU-Net switches per use (on in training, off in the predictor); the state-dict
#: keys do not depend on them, so a checkpoint's architecture is compared without them
SWITCHES = ("deep_supervision",)
_EXTRA_STATE_FORMAT = 1


def comparable_model_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` without the input/output channels that each dataset sets itself."""
    return {k: v for k, v in model_args.items() if k not in IO_ARGS}


def has_deep_supervision(model_args: dict[str, Any]) -> bool:
    """Whether the architecture has nnU-Net's deep-supervision outputs (the ResEnc U-Nets)."""
    return "deep_supervision" in model_args


def stage_strides(rasd_config: dict) -> list[list[int]]:
    """Per-stage strides per axis, where nnU-Net reads them (``arch_kwargs['strides']``) for the
    deep-supervision target scales."""
    dims = int(rasd_config["spatial_dims"])
    return [[int(s)] * dims for s in rasd_config["model_args"]["strides"]]


def architecture_entry(rasd_config: dict, input_scale: Sequence[float],
                       input_shift: Sequence[float]) -> dict:
    """The plans' ``architecture`` entry for the network ``rasd_config`` describes."""
    kwargs = {
        "rasd_architecture": rasd_config["architecture"],
        "rasd_model_args": comparable_model_args(rasd_config["model_args"]),
        "input_scale": [float(s) for s in input_scale],
        "input_shift": [float(s) for s in input_shift],
    }
    if has_deep_supervision(rasd_config["model_args"]):
        kwargs["strides"] = stage_strides(rasd_config)
    return {"network_class_name": NETWORK_CLASS, "arch_kwargs": kwargs, "_kw_requires_import": []}


def is_rasd_architecture(architecture: dict | None) -> bool:
    return bool(architecture) and architecture.get("network_class_name") == NETWORK_CLASS


class MappedNetwork(nn.Module):
    """``net(x * input_scale + input_shift)``: the plugin's one intensity path onto a network.

    Args:
        net: a rasd_hub model (it carries ``rasd_config``).
        input_scale, input_shift: one value per image channel (see
            :mod:`nnunet_plugin.normalization`).
        input_channels: channels fed (default: as many as there are values); channels beyond
            the values (a cascade's one-hot segmentations) pass through unchanged.

    The scale and shift are persistent buffers, so a checkpoint carries the mapping it was trained
    with. The nnU-Net trainers build :class:`RaSDNetwork` (this, built from the plans); the
    evaluation harness wraps its models in this class directly.
    """

    def __init__(self, net: nn.Module, input_scale: Sequence[float], input_shift: Sequence[float],
                 input_channels: int | None = None):
        super().__init__()
        input_channels = len(input_scale) if input_channels is None else int(input_channels)
        if len(input_scale) != len(input_shift) or not input_scale:
            raise PlansError("input_scale and input_shift need one value per image channel")
        if len(input_scale) > input_channels:
            raise PlansError(
                f"the plans map {len(input_scale)} image channels but nnU-Net feeds {input_channels}: "
                "these plans were written for another dataset; run `rasd nnunet plan` again")
        self.net = net
        extra = input_channels - len(input_scale)
        shape = (1, input_channels) + (1,) * int(net.rasd_config["spatial_dims"])
        scale = torch.tensor([*map(float, input_scale), *[1.0] * extra]).view(shape)
        shift = torch.tensor([*map(float, input_shift), *[0.0] * extra]).view(shape)
        self.register_buffer("input_scale", scale)
        self.register_buffer("input_shift", shift)

    @property
    def rasd_config(self) -> dict:
        return self.net.rasd_config

    def set_input_mapping(self, scale: Sequence[float], shift: Sequence[float]) -> None:
        """Replace the mapping of the first ``len(scale)`` channels (in place)."""
        n = len(scale)
        with torch.no_grad():
            self.input_scale.view(-1)[:n] = torch.tensor([float(s) for s in scale])
            self.input_shift.view(-1)[:n] = torch.tensor([float(s) for s in shift])

    def input_mapping(self) -> tuple[list[float], list[float]]:
        return self.input_scale.view(-1).tolist(), self.input_shift.view(-1).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.input_scale + self.input_shift)


class RaSDNetwork(MappedNetwork):
    """The network of RaSD plans, built by nnU-Net's ``get_network_from_plans``.

    Args:
        input_channels: channels nnU-Net feeds (image channels, plus one-hot segmentations of a
            previous stage in a cascade).
        num_classes: segmentation outputs.
        rasd_architecture: registered rasd_hub architecture (``rasd_hub.list_models()``).
        rasd_model_args: its arguments except ``in_channels`` / ``out_channels``.
        input_scale, input_shift: the plans' mapping, one value per image channel.
        deep_supervision: nnU-Net's flag. The Residual Encoder U-Nets return every decoder
            stage's output when it is set; rasd_hub's MONAI networks have a single output, so only
            ``False`` / ``None`` are accepted for them.
        strides: per-stage strides (deep-supervised networks only): nnU-Net reads them from the
            plans for the deep-supervision targets, so they must be the network's own.

    The scale and shift are the plans' values when built and the fold's own after a checkpoint is
    loaded. ``pretrained`` is the identity of the weights the fold started from (source, sha256,
    ...), or None for a network trained from scratch; it travels in checkpoints as the module's
    extra state.
    """

    def __init__(self, input_channels: int, num_classes: int, rasd_architecture: str,
                 rasd_model_args: dict[str, Any], input_scale: Sequence[float],
                 input_shift: Sequence[float], deep_supervision: bool | None = None,
                 strides: Sequence[Sequence[int]] | None = None):
        import rasd_hub

        args = dict(rasd_model_args)
        if has_deep_supervision(args):
            args["deep_supervision"] = bool(deep_supervision)
        elif deep_supervision:
            raise PlansError(f"{rasd_architecture} has a single output; train it with deep "
                             "supervision off (the RaSD trainers do)")
        # out_channels, not num_classes: the plans' arguments describe the whole network (a
        # class head included, ``head_channels``), also for plans written before it existed
        net = rasd_hub.create_model(rasd_architecture, pretrained=False, in_chans=input_channels,
                                    out_channels=num_classes, **args)
        super().__init__(net, input_scale, input_shift, input_channels)
        if strides is not None and [list(map(int, s)) for s in strides] != stage_strides(net.rasd_config):
            raise PlansError(
                f"the plans' strides {list(strides)} are not those of the {rasd_architecture} they "
                f"describe ({stage_strides(net.rasd_config)}); run `rasd nnunet plan` again")
        self.pretrained: dict | None = None

    @property
    def decoder(self) -> nn.Module:
        """The inner network's decoder, where nnU-Net switches deep supervision on and off."""
        return self.net.decoder

    # ---------------------------------------------------------------- what a checkpoint carries
    def _architecture(self) -> tuple[str, dict]:
        cfg = self.net.rasd_config
        args = {k: v for k, v in comparable_model_args(cfg["model_args"]).items() if k not in SWITCHES}
        return cfg["architecture"], args

    def get_extra_state(self) -> dict:
        architecture, args = self._architecture()
        return {"format": _EXTRA_STATE_FORMAT, "architecture": architecture, "model_args": args,
                "pretrained": self.pretrained}

    def set_extra_state(self, state: dict) -> None:
        ours = self._architecture()
        theirs = (state.get("architecture"), state.get("model_args"))
        if theirs != ours:
            raise PlansError(
                f"this checkpoint holds a {theirs[0]} with arguments {theirs[1]}, but the plans "
                f"describe a {ours[0]} with {ours[1]}: the checkpoint was trained with other plans. "
                "Predict with the results folder the checkpoint came from.")
        self.pretrained = state.get("pretrained")
