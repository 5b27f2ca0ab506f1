"""rasd_hub: the RaSD model zoo (timm-style registry, safetensors weights, Hugging Face Hub).

``import rasd_hub`` is light: torch, MONAI and huggingface_hub load on first use of the API.

>>> import rasd_hub
>>> model = rasd_hub.create_model("rasd2d_small", num_classes=3)          # random weights
>>> model = rasd_hub.load("hf-hub:ORG/REPO@COMMIT")                        # pretrained, verified
>>> rasd_hub.save_pretrained(model, "weights/", provenance={"preset": "rasd2d_small"})
>>> import timm; timm.create_model("rasd2d_small", pretrained=True)         # the same, from timm
"""

from __future__ import annotations

import importlib
from typing import Any

from rasd_hub._version import __version__

_LAZY = {
    "create_model": "rasd_hub._builder",
    "load": "rasd_hub._builder",
    "resolve_weights": "rasd_hub._builder",
    "list_models": "rasd_hub.catalog",
    "model_info": "rasd_hub.catalog",
    "list_pretrained": "rasd_hub.pretrained",
    "PretrainedCfg": "rasd_hub._pretrained",
    "register_pretrained": "rasd_hub.pretrained",
    "register_model": "rasd_hub._registry",
    "parse_weights_ref": "rasd_hub._sources",
    "HubRef": "rasd_hub._sources",
    "LocalRef": "rasd_hub._sources",
    "RegistryRef": "rasd_hub._sources",
    "set_normalization": "rasd_hub._manipulate",
    "resolve_device": "rasd_hub._device",
    "save_pretrained": "rasd_hub.weights",
    "LoadReport": "rasd_hub.weights",
    "push_to_hub": "rasd_hub.hub",
    "download": "rasd_hub._sources",
    "export_checkpoint": "rasd_hub.convert",
    "convert_checkpoint": "rasd_hub.convert",
    "install_weights": "rasd_hub.convert",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rasd_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# every rasd model becomes a timm model once timm is imported (rasd_hub._timm; torch-free here)
from rasd_hub._timm import install as _install_in_timm  # noqa: E402

_install_in_timm()
