"""The registry: architectures (entry points and their metadata) and pretrained tags.

Model files register their entry points with :func:`register_model`, and ``rasd_hub.pretrained``
its tags with :func:`register_pretrained`, when ``rasd_hub.models`` is imported. This module
imports neither (so nothing it is imported by imports it back); the modules that look names up
(``rasd_hub._sources``, ``rasd_hub.catalog``) import ``rasd_hub.models`` first. ``import rasd_hub``
stays free of torch because those modules load on first use.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from rasd_hub._pretrained import PretrainedCfg
from rasd_hub._validate import check_tag
from rasd_hub.errors import RasdValueError, UnknownModelError, WeightsNotAvailableError

__all__ = ["ArchSpec", "register_model", "get_arch", "list_architectures", "suggest", "is_architecture",
           "register_pretrained", "unregister_pretrained", "get_pretrained_cfg", "list_pretrained",
           "pretrained_cfgs", "default_tag", "how_to_get_weights"]


@dataclass(frozen=True)
class ArchSpec:
    """What the registry knows about one architecture without building it.

    Args:
        name: registered name (``rasd3d_swinb``).
        fn: entry point ``fn(features_only=False, **kwargs) -> nn.Module``.
        spatial_dims: 2 or 3.
        description: one line for ``rasd hub list``.
        num_params: parameter count with the default arguments (checked by the tests).
        input_size: a typical pre-training input, channels first (``(1, 128, 128, 128)``).
        input_divisor: spatial sizes must be multiples of this (default arguments).
        source: where the architecture comes from (code and the released weights' layout).
        notes: caveats, e.g. sizes that are our reading of the release.
        released_checkpoint: the authors' checkpoint file whose layout this matches (RaSE_B.pth).
        pretrain_preset: the `rasd pretrain --preset` recipe that trains it (None: no recipe).
        args_schema: the typed constructor arguments ``config.json`` is checked against
            (``rasd_hub._validate``); None: not checked beyond JSON values.
    """

    name: str
    fn: Callable[..., Any]
    spatial_dims: int
    description: str
    num_params: int
    input_size: tuple[int, ...]
    input_divisor: int
    source: str
    notes: str = ""
    released_checkpoint: str | None = None
    pretrain_preset: str | None = None
    code_license: str = "Apache-2.0 (MONAI network code)"
    args_schema: Any = None
    extra: dict = field(default_factory=dict)


_ARCHS: dict[str, ArchSpec] = {}
_TAGS: dict[str, PretrainedCfg] = {}


def register_model(
    *,
    spatial_dims: int,
    description: str,
    num_params: int,
    input_size: tuple[int, ...],
    input_divisor: int,
    source: str,
    notes: str = "",
    released_checkpoint: str | None = None,
    pretrain_preset: str | None = "",
    args_schema: Any = None,
    code_license: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers an entry point under its function name."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in _ARCHS and _ARCHS[name].fn is not fn:
            raise RuntimeError(f"architecture {name!r} registered twice")
        _ARCHS[name] = ArchSpec(
            name=name, fn=fn, spatial_dims=spatial_dims, description=description,
            num_params=num_params, input_size=tuple(input_size), input_divisor=input_divisor,
            source=source, notes=notes,
            released_checkpoint=released_checkpoint,
            pretrain_preset=name if pretrain_preset == "" else pretrain_preset,
            args_schema=args_schema,
            **({"code_license": code_license} if code_license else {}),
        )
        return fn

    return deco


def list_architectures(pattern: str | None = None) -> list[str]:
    """Registered architecture names (sorted), optionally filtered by a shell-style pattern."""
    names = sorted(_ARCHS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_architecture(name: str) -> bool:
    return name in _ARCHS


def suggest(name: str, candidates: list[str]) -> str:
    """`` Did you mean 'x' or 'y'?`` for a misspelt name (empty when nothing is close)."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def get_arch(name: str) -> ArchSpec:
    """The spec of a registered architecture; unknown names raise with close matches."""
    if not _ARCHS:  # a caller inside rasd_hub that looked a name up before the zoo was imported
        raise RuntimeError("no architectures are registered yet: import rasd_hub.models (the "
                           "public API, e.g. rasd_hub.create_model, does) before looking names up")
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {name!r}.{suggest(name, sorted(_ARCHS))} "
            "Run `rasd hub list` to see all registered models."
        ) from None


# -- pretrained tags ---------------------------------------------------------------------------

def register_pretrained(cfg: PretrainedCfg, *, replace: bool = False) -> PretrainedCfg:
    """Add a tag's config (the first one of an architecture becomes its default).

    A tag needs a source (``file``, ``path`` or ``hf_hub_id``); a Hub source must be pinned to a
    commit with the sha256 of ``model.safetensors`` and ``config.json``. ``replace=True``
    overwrites an existing tag (``rasd hub install`` re-installing newer weights).
    """
    check_tag(cfg)
    if cfg.name in _TAGS and not replace:
        raise RasdValueError(f"pretrained config {cfg.name} registered twice")
    _TAGS[cfg.name] = cfg
    return cfg


def unregister_pretrained(name: str) -> None:
    """Remove a tag (no error if it is not registered)."""
    _TAGS.pop(name, None)


def pretrained_cfgs(architecture: str | None = None) -> list[PretrainedCfg]:
    """The registered tags' configs (of one architecture), default first."""
    return [c for c in _TAGS.values() if architecture is None or c.architecture == architecture]


def list_pretrained(pattern: str | None = None) -> list[str]:
    """``arch.tag`` names that have weights."""
    names = sorted(_TAGS)
    return [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)
            or fnmatch.fnmatchcase(n.split(".")[0], pattern)]


def default_tag(architecture: str) -> PretrainedCfg | None:
    for cfg in _TAGS.values():
        if cfg.architecture == architecture:
            return cfg
    return None


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config of ``arch.tag``; a bare ``arch`` gives its default tag."""
    arch, _, tag = name.partition(".")
    get_arch(arch)  # unknown architecture: raises with suggestions
    if not tag:
        cfg = default_tag(arch)
        if cfg is None:
            raise WeightsNotAvailableError(how_to_get_weights(arch))
        return cfg
    try:
        return _TAGS[name]
    except KeyError:
        tags = [n for n in _TAGS if n.startswith(arch + ".")]
        hint = suggest(name, tags) or (f" Tags with weights: {', '.join(tags)}." if tags else "")
        raise UnknownModelError(f"no pretrained weights tagged {name!r}.{hint}\n"
                                + how_to_get_weights(arch, header=False)) from None


def how_to_get_weights(architecture: str, header: bool = True) -> str:
    """The message that says exactly how to obtain weights for ``architecture``: installing
    weights one has (the authors' release, or one's own) first, then pre-training."""
    spec = get_arch(architecture)
    lines = [f"no pretrained weights are registered for {architecture!r} yet."] if header else []
    lines.append("To get them:")
    n = 1
    if spec.released_checkpoint:
        lines.append(
            f"  {n}. install the authors' released checkpoint ({spec.released_checkpoint}, from the "
            f"RaSD release at github.com/yweibs/RaSD) on this machine:\n"
            f"       rasd hub convert {spec.released_checkpoint} --install")
        n += 1
    lines.append(
        f"  {n}. {'or ' if n > 1 else ''}install a weights folder you have (rasd hub export / "
        f"convert / save_pretrained):\n       rasd hub install WEIGHTS_DIR")
    n += 1
    if spec.pretrain_preset:
        lines.append(
            f"  {n}. or pre-train it yourself and export the checkpoint:\n"
            f"       rasd pretrain --preset {spec.pretrain_preset} ...\n"
            f"       rasd hub export RUN_DIR/checkpoints/step_XXXXXXX.pt WEIGHTS_DIR")
    else:
        lines.append(
            f"  {n}. or pre-train it with `rasd pretrain` (no preset ships for {architecture}; see "
            "`rasd pretrain --help`) and export the checkpoint:\n"
            "       rasd hub export RUN_DIR/checkpoints/step_XXXXXXX.pt WEIGHTS_DIR")
    lines.append(
        f"after installing, rasd_hub.create_model('{architecture}', pretrained=True) works offline; "
        f"a folder also loads directly with rasd_hub.load('WEIGHTS_DIR'), and weights on the Hub "
        f"with rasd_hub.load('hf-hub:ORG/REPO@REVISION').")
    return "\n".join(lines)
