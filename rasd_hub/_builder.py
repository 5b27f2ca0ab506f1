"""``create_model`` and ``load``: resolve a name to an architecture and (optionally) weights.

Names: ``arch`` (registered architecture), ``arch.tag`` (pretrained config), ``hf-hub:ORG/REPO[@REV]``
(any Hub repo in our format) or a local weights directory. ``pretrained`` is ``False``, ``True``
or a path (weights directory or ``.safetensors`` file). Resolution order for weights: an explicit
file/directory, the local Hub cache (no network when pinned to a commit and cached), the Hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasd_hub.errors import (
    ChecksumMismatchError, RasdValueError, UnknownModelError, WeightsFormatError,
    WeightsNotFoundError,
)

__all__ = ["create_model", "load", "resolve_weights", "WeightsSource", "HF_HUB_PREFIX"]

HF_HUB_PREFIX = "hf-hub:"


@dataclass
class WeightsSource:
    """Resolved weights: their config and a local safetensors file."""

    config: dict[str, Any] | None
    weights_file: Path | None
    label: str
    expected_sha256: str | None = None  # still to check before use
    verified_sha256: str | None = None  # already checked (by the Hub layer)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a file system path (registry names have no slashes and never
    start with a dot or ``~``)."""
    return "/" in name or os.sep in name or name.startswith((".", "~"))


def _parse_hub(name: str) -> tuple[str, str | None]:
    repo = name[len(HF_HUB_PREFIX):]
    repo, _, rev = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise RasdValueError(f"{name!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
    return repo, (rev or None)


def _local_source(path: str | os.PathLike, *, need_weights: bool = True) -> WeightsSource:
    from rasd_hub.weights import WEIGHTS_NAME, read_config

    p = Path(path).expanduser()
    if p.is_dir():
        config = read_config(p)
        wf = p / config.get("weights", {}).get("file", WEIGHTS_NAME)
        if need_weights and not wf.is_file():
            raise WeightsFormatError(f"{p} has a config.json but no {wf.name}; re-export the weights")
        return WeightsSource(config, wf, str(p), expected_sha256=config.get("weights", {}).get("sha256"))
    if p.is_file():
        if p.suffix != ".safetensors":
            raise WeightsFormatError(
                f"{p}: rasd_hub loads only safetensors weights (never pickles). Convert a .pth/.pt "
                f"file with `rasd hub convert {p.name} OUTDIR --arch ARCH` or export a training "
                f"checkpoint with `rasd hub export {p.name} OUTDIR`."
            )
        config = None
        if (p.parent / "config.json").is_file():
            config = read_config(p.parent)
        return WeightsSource(config, p, str(p))
    kind = "file" if p.suffix == ".safetensors" else "directory"
    raise WeightsNotFoundError(
        f"{str(path)!r}: no such {kind} ({p.resolve()}). Check the path; a weights folder holds "
        "model.safetensors, config.json and README.md (write one with `rasd hub export` or "
        "rasd_hub.save_pretrained).")


def resolve_weights(
    name: str, pretrained: bool | str | os.PathLike = True, *, offline: bool | None = None,
    cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
    need_weights: bool = True,
) -> tuple[str, WeightsSource | None]:
    """Resolve ``name`` / ``pretrained`` to ``(architecture, weights source or None)``.

    With ``need_weights=False`` an ``hf-hub:`` name or a directory only provides the config.
    """
    from rasd_hub._registry import get_arch, is_architecture, list_architectures, suggest
    from rasd_hub.pretrained import get_pretrained_cfg, list_pretrained

    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise RasdValueError(f"model name must be a non-empty string, got {name!r}")
    explicit = pretrained if isinstance(pretrained, (str, os.PathLike)) else None

    if name.startswith(HF_HUB_PREFIX):
        from rasd_hub.hub import fetch_weights

        repo, rev = _parse_hub(name)
        if explicit is not None:
            raise RasdValueError(f"{name}: give either an hf-hub name or a pretrained path, not both")
        src = fetch_weights(repo, rev, offline=offline, cache_dir=cache_dir, endpoint=endpoint,
                            weights=need_weights)
        return src.config["architecture"], src
    if _looks_like_path(name) or (Path(name).is_dir() and not is_architecture(name)):
        if explicit is not None:
            raise RasdValueError(f"{name}: give either a weights folder or a pretrained path, not both")
        src = _local_source(name, need_weights=need_weights)
        if src.config is None:  # a bare .safetensors file: nothing says what to build
            raise WeightsFormatError(
                f"{name} is a weights file without a config.json beside it; pass the "
                f"architecture: create_model(ARCH, pretrained={name!r})")
        return src.config["architecture"], src

    arch, _, tag = name.partition(".")
    if not is_architecture(arch):
        candidates = list_architectures() + list_pretrained()
        raise UnknownModelError(
            f"unknown model {name!r} (and there is no folder of that name here).{suggest(name, candidates)} "
            "Run `rasd hub list` for the registered models; load Hub repos as "
            "'hf-hub:ORG/REPO[@REV]' and local weights by folder path (e.g. ./weights)."
        )
    get_arch(arch)
    if explicit is not None:
        src = _local_source(explicit)
        if src.config and src.config["architecture"] != arch:
            raise WeightsFormatError(
                f"weights in {explicit} are for {src.config['architecture']!r}, not {arch!r}; "
                f"use create_model({src.config['architecture']!r}, pretrained=...) or load({str(explicit)!r})"
            )
        return arch, src
    if not pretrained:
        if tag:
            get_pretrained_cfg(name)  # a bad tag is an error even without weights
        return arch, None
    cfg = get_pretrained_cfg(name)  # raises with instructions when no weights exist
    return arch, _source_from_cfg(cfg, offline=offline, cache_dir=cache_dir, endpoint=endpoint)


def _source_from_cfg(cfg, *, offline, cache_dir, endpoint) -> WeightsSource:
    if cfg.file:
        import rasd_hub

        src = _local_source(Path(rasd_hub.__file__).parent / cfg.file)
    elif cfg.path:
        src = _local_source(cfg.path)
    else:
        from rasd_hub.hub import fetch_weights

        src = fetch_weights(cfg.hf_hub_id, cfg.revision, sha256=cfg.sha256, offline=offline,
                            cache_dir=cache_dir, endpoint=endpoint)
    pinned = cfg.sha256.get("model.safetensors")
    if pinned:
        recorded = ((src.config or {}).get("weights") or {}).get("sha256")
        if recorded and recorded != pinned:  # as the Hub path refuses (rasd_hub.hub.fetch_weights)
            raise ChecksumMismatchError(
                f"{cfg.name}: {src.label}/config.json records sha256 {recorded} for "
                f"model.safetensors but {cfg.name} is pinned to {pinned}; the folder is not the "
                "pinned weights (replaced or re-exported). Restore the pinned weights or register "
                "the new ones under a new tag.",
                filename="model.safetensors", expected=pinned, actual=recorded)
        if src.verified_sha256 and src.verified_sha256 != pinned:
            raise ChecksumMismatchError(
                f"{cfg.name}: model.safetensors has sha256 {src.verified_sha256}, pinned {pinned}",
                filename="model.safetensors", expected=pinned, actual=src.verified_sha256)
        if not src.verified_sha256:
            src.expected_sha256 = pinned
    src.label = f"{cfg.name} ({src.label})"
    return src


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    *,
    strict: bool = True,
    offline: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    **kwargs: Any,
):
    """Build a registered model, optionally with pretrained weights (timm's ``create_model``).

    Args:
        name: ``arch``, ``arch.tag``, ``hf-hub:ORG/REPO[@REV]`` or a weights directory.
        pretrained: ``True`` loads the name's weights; a path loads that weights directory or
            ``.safetensors`` file; ``False`` builds with random weights (the architecture's
            arguments still come from the weights' config for hf-hub names and directories).
        num_classes: output channels; a value different from the weights' gives a fresh head.
        in_chans: input channels (default: the weights' config for hf-hub names, folders and
            tags, else the architecture's, 1); differing from the weights' adapts the stem
            weights (repeated and rescaled by ``1/in_chans``).
        features_only: return the encoder, whose forward gives a list of multi-scale feature maps
            (``model.feature_info`` has their channels and reductions).
        strict: raise on any missing, unexpected or reshaped key (one message lists them all);
            ``False`` loads the matching keys and warns.
        offline: never touch the network (default: ``HF_HUB_OFFLINE``).
        cache_dir: Hub cache directory (default: the huggingface_hub cache).
        endpoint: Hub endpoint or mirror URL (default: ``HF_ENDPOINT``).
        **kwargs: architecture arguments (e.g. ``feature_size=24``, ``dropout=0.1``).

    Returns an ``nn.Module`` with ``rasd_config`` and ``set_grad_checkpointing``.
    """
    arch, src = resolve_weights(name, pretrained, offline=offline, cache_dir=cache_dir,
                                endpoint=endpoint, need_weights=bool(pretrained))
    if src is not None and pretrained:
        return _create_from_source(arch, src, strict=strict, num_classes=num_classes,
                                   in_chans=in_chans, features_only=features_only, **kwargs)
    return _build(arch, src.config if src else None, kwargs, num_classes=num_classes,
                  in_chans=in_chans, features_only=features_only)


def _build(arch: str, config: dict | None, kwargs: dict, *, num_classes, in_chans, features_only):
    from rasd_hub._registry import get_arch

    if features_only and num_classes is not None:
        raise RasdValueError("num_classes has no meaning with features_only=True (there is no head)")
    args: dict[str, Any] = dict(config["model_args"]) if config else {}
    args.update(kwargs)
    if in_chans is not None:
        args["in_channels"] = int(in_chans)
    if num_classes is not None:
        args["out_channels"] = int(num_classes)
    return get_arch(arch).fn(features_only=bool(features_only), **args)


def _config_from_state_dict(model, state_dict) -> dict[str, Any]:
    """For a bare .safetensors file without config.json: infer in/out channels from shapes."""
    cfg: dict[str, Any] = {}
    stem = model.rasd_config.get("stem") or []
    if stem and stem[0] in state_dict:
        cfg["in_chans"] = int(state_dict[stem[0]].shape[1])
    head = model.rasd_config.get("head")
    if head:
        own = model.state_dict()
        for k in own:
            if k.startswith(head + ".") and k in state_dict and state_dict[k].ndim >= 1:
                if state_dict[k].shape != own[k].shape:
                    cfg["out_channels"] = -1  # differs: the head is re-initialised
                    break
        else:
            cfg["out_channels"] = model.rasd_config.get("out_channels")
    return cfg


def load(
    name_or_path: str | os.PathLike, *, strict: bool = True, offline: bool | None = None,
    cache_dir: str | os.PathLike | None = None, endpoint: str | None = None, **kwargs: Any,
):
    """A pretrained model in one call, rebuilt exactly as it was saved.

    ``name_or_path``: a weights directory, ``hf-hub:ORG/REPO[@REV]`` or ``arch[.tag]``. The
    architecture, its arguments, input channels and ``features_only`` come from the weights'
    ``config.json``; ``kwargs`` (``num_classes``, ``in_chans``, architecture arguments) override.
    Where no weights exist for a name the error says how to get them.
    """
    name = os.fspath(name_or_path)
    arch, src = resolve_weights(name, True, offline=offline, cache_dir=cache_dir, endpoint=endpoint)
    cfg = src.config or {}
    kwargs.setdefault("features_only", bool(cfg.get("features_only", False)))
    return _create_from_source(arch, src, strict=strict, **kwargs)


def _create_from_source(arch: str, src: WeightsSource, *, strict: bool, num_classes=None,
                        in_chans=None, features_only=False, **kwargs):
    """create_model for an already resolved source (avoids resolving/downloading twice)."""
    model = _build(arch, src.config, kwargs, num_classes=num_classes, in_chans=in_chans,
                   features_only=features_only)
    return load_into(model, src, strict=strict)


def load_into(model, src: WeightsSource, *, strict: bool = True):
    """Load resolved weights into a built model: verify, read (memory-mapped), adapt, assign.

    The safetensors file is memory-mapped and its tensors are assigned to the model (not copied),
    so loading never holds two copies of the weights; pages are copied on write when trained.
    """
    from rasd_hub._io import sha256_file
    from rasd_hub.weights import adapt_state_dict, load_state_dict_checked, load_weights_file

    state_dict = load_weights_file(src.weights_file, src.expected_sha256)
    source_cfg = src.config or _config_from_state_dict(model, state_dict)
    state_dict, report = adapt_state_dict(state_dict, model, source_cfg)
    load_state_dict_checked(model, state_dict, strict=strict, report=report, source=src.label)
    del state_dict
    # what the weights were trained on (e.g. measured input moments) travels with them
    if src.config and src.config.get("normalization"):
        model.rasd_config["normalization"] = dict(src.config["normalization"])
    # provenance is always complete: a bare file with no recorded hash gets hashed here
    sha256 = src.verified_sha256 or src.expected_sha256 or sha256_file(src.weights_file)
    model.rasd_config["pretrained"] = {"source": src.label, "sha256": sha256}
    model.load_report = report
    return model
