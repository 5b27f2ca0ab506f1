"""The network nnU-Net trains: a rasd_hub model behind a fixed input mapping.

The architecture itself always comes from :func:`rasd_hub.create_model`; this module only adds the
per-channel affine map that puts nnU-Net's normalised intensities on the footing the weights were
pre-trained on (see :mod:`nnunet_plugin.normalization`), and the recipe that nnU-Net stores in its
plans so that ``nnUNetv2_predict`` can rebuild the network without the weights file.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

# model_args keys that create_model sets from its own arguments (in_chans, num_classes).
_IO_ARGS = ("in_channels", "out_channels")


class RaSDNetwork(nn.Module):
    """``net(x * input_scale + input_shift)`` with one scale and shift per input channel.

    The scale and shift are non-persistent buffers: they are not in the state dict (they are part of
    the recipe in the plans), so nnU-Net checkpoints hold exactly the rasd_hub model's tensors under
    the prefix ``net.``.
    """

    def __init__(self, net: nn.Module, input_scale: Sequence[float], input_shift: Sequence[float]):
        super().__init__()
        if len(input_scale) != len(input_shift):
            raise ValueError("input_scale and input_shift need one value per input channel")
        self.net = net
        dims = int(net.rasd_config["spatial_dims"])
        shape = (1, len(input_scale)) + (1,) * dims
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=torch.float32).view(shape),
                             persistent=False)
        self.register_buffer("input_shift", torch.tensor(input_shift, dtype=torch.float32).view(shape),
                             persistent=False)

    @property
    def rasd_config(self) -> dict:
        return self.net.rasd_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.input_scale + self.input_shift)


def network_recipe(rasd_config: dict, input_scale: Sequence[float], input_shift: Sequence[float],
                   weights: dict | None) -> dict:
    """The ``architecture`` entry written into nnU-Net's plans for one configuration.

    ``arch_kwargs`` holds everything :func:`build_from_recipe` needs; ``weights`` (source and
    sha256, or None when trained from scratch) is recorded for provenance only.
    """
    return {
        "network_class_name": "nnunet_plugin.network.RaSDNetwork",
        "arch_kwargs": {
            "rasd_architecture": rasd_config["architecture"],
            "rasd_model_args": {k: v for k, v in rasd_config["model_args"].items() if k not in _IO_ARGS},
            "spatial_dims": int(rasd_config["spatial_dims"]),
            "input_divisor": int(rasd_config["input_divisor"]),
            "input_scale": [float(s) for s in input_scale],
            "input_shift": [float(s) for s in input_shift],
            "pretrained_weights": weights,
        },
        "_kw_requires_import": [],
    }


def is_rasd_recipe(architecture: dict | None) -> bool:
    return bool(architecture) and "rasd_architecture" in architecture.get("arch_kwargs", {})


def build_from_recipe(arch_kwargs: dict[str, Any], num_input_channels: int,
                      num_output_channels: int) -> RaSDNetwork:
    """Build the (randomly initialised) network a recipe describes: no weights file needed."""
    import rasd_hub

    net = rasd_hub.create_model(arch_kwargs["rasd_architecture"], pretrained=False,
                                num_classes=num_output_channels, in_chans=num_input_channels,
                                **arch_kwargs["rasd_model_args"])
    scale, shift = arch_kwargs["input_scale"], arch_kwargs["input_shift"]
    if len(scale) != num_input_channels:
        raise ValueError(f"the plans' RaSD recipe maps {len(scale)} input channels but the dataset "
                         f"has {num_input_channels}; re-run training with these plans")
    return RaSDNetwork(net, scale, shift)
