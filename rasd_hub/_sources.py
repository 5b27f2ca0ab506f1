"""The one weights-source resolver: what a name means, and the verified files it gives.

A weights name is one of three kinds, each a typed reference:

- :class:`HubRef` ``hf-hub:ORG/REPO[@REVISION]``: a Hub repo in our format;
- :class:`LocalRef`: a weights folder (or a ``.safetensors`` file): anything with a path separator,
  starting with ``.`` or ``~``, ending in ``.safetensors``, or an existing folder that is not an
  architecture name;
- :class:`RegistryRef` ``ARCH`` or ``ARCH.TAG``: a registered tag (``rasd hub list --pretrained``).

:func:`parse_weights_ref` decides which (the one place that does); :func:`resolve_ref` fetches and
verifies the files. rasd_hub's builder, the nnU-Net plugin and ``rasd eval`` all go through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import rasd_hub.models  # noqa: F401  (registers the architectures and tags looked up here)
from rasd_hub._io import sha256_file
from rasd_hub._registry import (
    get_arch, get_pretrained_cfg, is_architecture, list_architectures, list_pretrained, suggest,
)
from rasd_hub.errors import (
    ChecksumMismatchError, RasdValueError, UnknownModelError, WeightsFormatError, WeightsNotFoundError,
)
from rasd_hub.hub import commit_of, fetch_weights
from rasd_hub.weights import WEIGHTS_NAME, WeightsSource, read_config

__all__ = ["HF_HUB_PREFIX", "HubRef", "LocalRef", "RegistryRef", "WeightsRef", "parse_weights_ref",
           "resolve_ref", "local_source", "source_from_cfg", "download", "architecture_of"]

HF_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class HubRef:
    """``hf-hub:ORG/REPO[@REVISION]``."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HF_HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class LocalRef:
    """A weights folder or ``.safetensors`` file."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RegistryRef:
    """A registered architecture (its default tag) or ``ARCH.TAG``."""

    architecture: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture


WeightsRef = Union[HubRef, LocalRef, RegistryRef]


def _looks_like_path(name: str) -> bool:
    """A name that can only be a file system path (registry names have no slashes and never
    start with a dot or ``~``)."""
    return ("/" in name or os.sep in name or name.startswith((".", "~"))
            or name.endswith(".safetensors"))


def parse_weights_ref(name: str | os.PathLike, *, architecture: str | None = None) -> WeightsRef:
    """What ``name`` refers to. With ``architecture`` (``rasd eval --model ARCH --init TAG``) a bare
    ``TAG`` means ``ARCH.TAG``. Unknown registry names raise with close matches."""
    if isinstance(name, os.PathLike):
        return LocalRef(Path(os.fspath(name)).expanduser())
    if not isinstance(name, str) or not name:
        raise RasdValueError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith(HF_HUB_PREFIX):
        repo, _, rev = name[len(HF_HUB_PREFIX):].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise RasdValueError(f"{name!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
        return HubRef(repo, rev or None)
    arch, _, tag = name.partition(".")
    if _looks_like_path(name) or (Path(name).expanduser().exists() and not is_architecture(arch)):
        return LocalRef(Path(name).expanduser())
    if is_architecture(arch):
        return RegistryRef(arch, tag or None)
    if architecture is not None and is_architecture(architecture):
        return RegistryRef(architecture, name)
    candidates = list_architectures() + list_pretrained()
    raise UnknownModelError(
        f"unknown model {name!r} (and there is no folder of that name here).{suggest(name, candidates)} "
        "Run `rasd hub list` for the registered models; load Hub repos as "
        "'hf-hub:ORG/REPO[@REV]' and local weights by folder path (e.g. ./weights)."
    )


def local_source(path: str | os.PathLike, *, need_weights: bool = True,
                 expected_sha256: dict[str, str] | None = None) -> WeightsSource:
    """A weights folder or ``.safetensors`` file; ``expected_sha256`` pins files by name
    (``config.json`` is checked here, ``model.safetensors`` when it is read)."""
    p = Path(path).expanduser()
    pins = dict(expected_sha256 or {})
    if p.is_dir():
        pinned_cfg = pins.get("config.json")
        if pinned_cfg and (p / "config.json").is_file():
            actual = sha256_file(p / "config.json")
            if actual != pinned_cfg:
                raise ChecksumMismatchError(
                    f"{p}/config.json has sha256 {actual}, pinned {pinned_cfg}: it was edited or "
                    "replaced (it sets the architecture and the normalisation the weights expect). "
                    "Restore the pinned file, or install the changed folder under a new tag.",
                    filename="config.json", expected=pinned_cfg, actual=actual)
        config = read_config(p)
        wf = p / config.get("weights", {}).get("file", WEIGHTS_NAME)
        if need_weights and not wf.is_file():
            raise WeightsFormatError(f"{p} has a config.json but no {wf.name}; re-export the weights")
        return WeightsSource(config, wf, str(p), expected_sha256=config.get("weights", {}).get("sha256"),
                             ref=str(p.resolve()))
    if p.is_file():
        if p.suffix != ".safetensors":
            raise WeightsFormatError(
                f"{p}: rasd_hub loads only safetensors weights (never pickles). Convert a .pth/.pt "
                f"file with `rasd hub convert {p.name} OUTDIR --arch ARCH` or export a training "
                f"checkpoint with `rasd hub export {p.name} OUTDIR`."
            )
        config = read_config(p.parent) if (p.parent / "config.json").is_file() else None
        return WeightsSource(config, p, str(p), ref=str(p.resolve()))
    kind = "file" if p.suffix == ".safetensors" else "directory"
    raise WeightsNotFoundError(
        f"{str(path)!r}: no such {kind} ({p.resolve()}). Check the path; a weights folder holds "
        "model.safetensors, config.json and README.md (write one with `rasd hub export` or "
        "rasd_hub.save_pretrained).")


def source_from_cfg(cfg, *, offline=None, cache_dir=None, endpoint=None,
                    need_weights: bool = True) -> WeightsSource:
    """The verified files of a registered tag: every file it reads is pinned."""
    pins = cfg.sha256
    if cfg.file:  # relative to the package folder, which is this module's
        src = local_source(Path(__file__).resolve().parent / cfg.file, expected_sha256=pins,
                           need_weights=need_weights)
    elif cfg.path:
        src = local_source(cfg.path, expected_sha256=pins, need_weights=need_weights)
    else:
        src = fetch_weights(cfg.hf_hub_id, cfg.revision, sha256=pins, offline=offline,
                            cache_dir=cache_dir, endpoint=endpoint, weights=need_weights)
    pinned = pins.get("model.safetensors")
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
    src.ref = cfg.name
    return src


def resolve_ref(ref: WeightsRef, *, offline: bool | None = None, cache_dir=None,
                endpoint: str | None = None, need_weights: bool = True) -> WeightsSource:
    """The verified files ``ref`` names (``need_weights=False``: the config only, where that
    saves a download). A registry architecture without weights raises saying how to get them."""
    if isinstance(ref, HubRef):
        return fetch_weights(ref.repo_id, ref.revision, offline=offline, cache_dir=cache_dir,
                             endpoint=endpoint, weights=need_weights)
    if isinstance(ref, LocalRef):
        return local_source(ref.path, need_weights=need_weights)
    cfg = get_pretrained_cfg(str(ref))
    return source_from_cfg(cfg, offline=offline, cache_dir=cache_dir, endpoint=endpoint,
                           need_weights=need_weights)


def download(names: list[str] | str, *, cache_dir=None, endpoint: str | None = None,
             offline: bool | None = None) -> list[dict[str, Any]]:
    """Prefetch weights into the Hub cache (for a login node before going offline).

    ``names``: ``hf-hub:ORG/REPO[@REV]``, ``arch.tag`` or ``arch`` (its default tag). Returns one
    dict per name with the commit, files and sha256 to pin.
    """
    out = []
    for name in [names] if isinstance(names, str) else list(names):
        ref = parse_weights_ref(name)
        if isinstance(ref, HubRef):
            repo, rev, pins = ref.repo_id, ref.revision, {}
        elif isinstance(ref, RegistryRef):
            cfg = get_pretrained_cfg(str(ref))
            if not cfg.hf_hub_id:
                out.append({"name": cfg.name, "source": "package" if cfg.file else cfg.path,
                            "note": "nothing to download"})
                continue
            repo, rev, pins = cfg.hf_hub_id, cfg.revision, cfg.sha256
        else:
            raise RasdValueError(f"{name}: a local folder has nothing to download")
        src = fetch_weights(repo, rev, sha256=pins, cache_dir=cache_dir, endpoint=endpoint,
                            offline=offline, readme=True)
        commit = commit_of(src.weights_file)
        out.append({"name": name, "repo_id": repo, "commit": commit,
                    "pin": f"hf-hub:{repo}@{commit}", "file": src.weights_file.name,
                    "sha256": src.verified_sha256, "path": str(src.weights_file.parent)})
    return out


def architecture_of(ref: WeightsRef, src: WeightsSource | None) -> str:
    """The architecture a reference builds."""
    if isinstance(ref, RegistryRef):
        get_arch(ref.architecture)
        return ref.architecture
    if src is None or src.config is None:
        raise WeightsFormatError(
            f"{ref} is a weights file without a config.json beside it; pass the "
            f"architecture: create_model(ARCH, pretrained={str(ref)!r})")
    return src.config["architecture"]
