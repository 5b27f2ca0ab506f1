"""The architecture registry: entry-point functions plus the metadata ``model_info`` reports.

Model files register their entry points with :func:`register_model` at import time; the registry
imports :mod:`rasd_hub.models` on first use, so ``import rasd_hub`` stays free of torch.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from rasd_hub.errors import UnknownModelError

__all__ = ["ArchSpec", "register_model", "get_arch", "list_architectures", "suggest", "is_architecture"]


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
    extra: dict = field(default_factory=dict)


_ARCHS: dict[str, ArchSpec] = {}
_LOADED = False


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
            **({"code_license": code_license} if code_license else {}),
        )
        return fn

    return deco


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        import rasd_hub.models  # noqa: F401  (registers the entry points)

        _LOADED = True


def list_architectures(pattern: str | None = None) -> list[str]:
    """Registered architecture names (sorted), optionally filtered by a shell-style pattern."""
    _ensure_loaded()
    names = sorted(_ARCHS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_architecture(name: str) -> bool:
    _ensure_loaded()
    return name in _ARCHS


def suggest(name: str, candidates: list[str]) -> str:
    """`` Did you mean 'x' or 'y'?`` for a misspelt name (empty when nothing is close)."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def get_arch(name: str) -> ArchSpec:
    """The spec of a registered architecture; unknown names raise with close matches."""
    _ensure_loaded()
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {name!r}.{suggest(name, sorted(_ARCHS))} "
            "Run `rasd hub list` to see all registered models."
        ) from None
