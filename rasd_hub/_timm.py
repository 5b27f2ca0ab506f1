"""rasd models inside timm: its registry, ``timm.create_model`` and its ``hf-hub:`` loader.

After ``import rasd_hub`` every rasd architecture is a timm model (``timm.list_models('rasd*')``)
with its tags (``timm.list_models('rasd*', pretrained=True)``). timm calls the entry points
registered here, which build and load through rasd_hub: the weights are verified (sha256,
safetensors, a strict load report) and never fetched by timm's own downloader. A ``config.json``
written by ``rasd hub push`` / ``save_pretrained`` holds what timm's ``hf-hub:`` and
``local-dir:`` loaders read (``architecture``, ``model_args``, ``pretrained_cfg``); timm reads that
file on its own (for the architecture), then rasd_hub reads and verifies every file again.

``import rasd_hub`` does not import timm (nor torch): :func:`install` registers at once if timm is
already imported, else as soon as timm is.

Where timm assumes 2D images, 3D models differ: ``input_size`` is ``(C, D, H, W)``;
``timm.data.resolve_data_config`` and timm's transforms are 2D-only; timm's own channel adaptation
(``adapt_input_conv``) is Conv2d-only, so ``in_chans`` goes to rasd_hub's (2D and 3D).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["install", "register_in_timm", "timm_default_cfgs"]

_REGISTERED = False
#: timm's ``register_model`` reads ``default_cfgs`` of the module that defines the entry points
default_cfgs: dict = {}


def timm_default_cfgs() -> dict[str, dict[str, Any]]:
    """timm pretrained-config dicts per ``arch[.tag]``: what timm lists; rasd_hub loads."""
    import rasd_hub.models  # noqa: F401  (registers the architectures and tags)
    from rasd_hub._registry import get_arch, list_architectures, pretrained_cfgs

    package = Path(__file__).resolve().parent  # the rasd_hub package folder
    cfgs: dict[str, dict[str, Any]] = {}
    for arch in list_architectures():
        spec = get_arch(arch)
        common = dict(input_size=tuple(spec.input_size), num_classes=32, license="apache-2.0",
                      description=spec.description)
        tags = pretrained_cfgs(arch)
        for cfg in tags:
            where: dict[str, Any] = {}
            if cfg.hf_hub_id:
                where["hf_hub_id"] = f"{cfg.hf_hub_id}@{cfg.revision}"
            else:
                where["file"] = str(package / cfg.file) if cfg.file else cfg.path
            cfgs[cfg.name] = dict(common, license=cfg.license, description=cfg.description or spec.description,
                                  **where)
        if not tags:
            cfgs[arch] = common
    return cfgs


def _name_for(arch: str, pretrained_cfg: Any, overlay: dict | None) -> tuple[str, Any]:
    """The rasd_hub (name, pretrained-path) for what timm passes the entry point."""
    if overlay:
        unknown = set(overlay) - {"file"}
        if unknown:
            from rasd_hub.errors import RasdValueError

            raise RasdValueError(f"pretrained_cfg_overlay keys {sorted(unknown)} are not supported for "
                                 "rasd models (only 'file': a weights folder)")
        return arch, overlay["file"]
    if isinstance(pretrained_cfg, dict):
        source = pretrained_cfg.get("source")
        if source == "hf-hub":
            return f"hf-hub:{pretrained_cfg['hf_hub_id']}", None
        if source == "local-dir":
            return str(pretrained_cfg["file"]), None
        tag = pretrained_cfg.get("tag")
        return (f"{arch}.{tag}" if tag else arch), None
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        return f"{arch}.{pretrained_cfg}", None
    tag = getattr(pretrained_cfg, "tag", None)  # timm's PretrainedCfg
    return (f"{arch}.{tag}" if tag else arch), None


def _entry_point(arch: str):
    def entry(pretrained: bool = False, pretrained_cfg: Any = None,
              pretrained_cfg_overlay: dict | None = None, cache_dir=None, **kwargs: Any):
        from rasd_hub._builder import create_model

        name, path = _name_for(arch, pretrained_cfg, pretrained_cfg_overlay)
        # for hf-hub: / local-dir: names timm passes config.json's model_args as keyword
        # arguments: the same values rasd_hub reads from the verified file (no-ops), or the
        # caller's overrides; num_classes / in_chans are applied after them
        kwargs = {k: v for k, v in kwargs.items() if k not in ("scriptable", "exportable", "no_jit")}
        return create_model(name, pretrained=path if (pretrained and path) else bool(pretrained),
                            cache_dir=cache_dir, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__module__ = __name__
    entry.__doc__ = f"timm entry point of rasd_hub's {arch} (built and loaded by rasd_hub.create_model)."
    return entry


def register_in_timm() -> None:
    """Put every rasd architecture and tag into timm's registry (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from timm.models import register_model
    from timm.models._registry import generate_default_cfgs

    import rasd_hub.models  # noqa: F401  (registers the architectures)
    from rasd_hub._registry import list_architectures

    default_cfgs.update(generate_default_cfgs(timm_default_cfgs()))
    for arch in list_architectures():
        fn = _entry_point(arch)
        setattr(sys.modules[__name__], arch, fn)
        register_model(fn)
    _REGISTERED = True


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Registers the rasd models right after ``import timm`` finishes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_in_timm()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register into timm now if it is imported, else when it is (``import rasd_hub`` calls this)."""
    if "timm" in sys.modules:
        register_in_timm()
    elif not any(isinstance(f, _RegisterAfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimmImport())
