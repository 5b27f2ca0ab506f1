"""``list_models`` and ``model_info``: what is registered and what each model expects."""

from __future__ import annotations

from typing import Any

import rasd_hub.models  # noqa: F401  (registers the architectures and tags listed here)
from rasd_hub._registry import (
    get_arch, get_pretrained_cfg, how_to_get_weights, list_architectures, list_pretrained,
    pretrained_cfgs,
)
from rasd_hub.models._base import NORMALIZATION

__all__ = ["list_models", "model_info"]


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered architectures (``pretrained=False``) or ``arch.tag`` names with weights.

    ``pattern`` is a shell-style filter (``"rasd3d*"``).
    """
    if pretrained:
        return list_pretrained(pattern)
    return list_architectures(pattern)


def model_info(name: str) -> dict[str, Any]:
    """Metadata of a registered model without building it.

    Returns parameters, typical input size, input divisor, intensity normalisation expected, code
    and weights licences, sources, notes (e.g. sizes that are our reading of the release) and the
    weights available (each ``arch.tag`` with its source), or how to get weights when none exist.
    """
    arch, _, tag = name.partition(".")
    spec = get_arch(arch)
    if tag:
        get_pretrained_cfg(name)
    weights = []
    for cfg in pretrained_cfgs(arch):
        if tag and cfg.tag != tag:
            continue
        weights.append({"name": cfg.name, "source": cfg.where, "license": cfg.license,
                        "sha256": dict(cfg.sha256), "description": cfg.description,
                        "provenance": dict(cfg.provenance)})
    return {
        "name": name,
        "architecture": arch,
        "description": spec.description,
        "spatial_dims": spec.spatial_dims,
        "num_params": spec.num_params,
        "input_size": list(spec.input_size),
        "input_divisor": spec.input_divisor,
        "in_chans": spec.input_size[0],
        "out_channels": 32,
        "normalization": dict(NORMALIZATION),
        "code_license": spec.code_license,
        "source": spec.source,
        "released_checkpoint": spec.released_checkpoint,
        "notes": spec.notes,
        "weights": weights,
        "how_to_get_weights": None if weights else how_to_get_weights(arch),
    }
