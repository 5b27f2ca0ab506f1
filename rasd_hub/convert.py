"""Turn checkpoints into our weights format: training checkpoints (export) and released RaSE_*.pth.

Files are read with ``torch.load(weights_only=True)``: plain tensors and containers only, never
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from rasd_hub._builder import build_model, create_model
from rasd_hub._io import sha256_file
from rasd_hub._manipulate import set_normalization
from rasd_hub._validate import check_normalization
from rasd_hub.errors import StateDictMismatchError, WeightsFormatError
from rasd_hub.weights import load_state_dict_checked, save_pretrained

__all__ = ["export_checkpoint", "model_from_checkpoint", "convert_checkpoint",
           "unwrap_released_state_dict", "read_checkpoint", "install_weights", "default_install_tag",
           "architecture_for_release"]

#: containers the released downstream loader unwraps, outermost first
WRAPPER_KEYS = ("state_dict", "network_weights", "net", "student", "model")
#: prefixes stripped from every key (DDP / wrapper / torch.compile)
PREFIXES = ("module.", "backbone.", "_orig_mod.")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that say what to do."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"checkpoint {path} not found")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err) and "zipfile" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise WeightsFormatError(
            f"{path} cannot be read safely with torch.load(weights_only=True): "
            f"{str(err).splitlines()[0][:300]}. "
            "rasd_hub never unpickles arbitrary objects; re-save the checkpoint with plain tensors "
            "and containers (torch.save(model.state_dict(), ...))."
        ) from None


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_released_state_dict(obj: Any) -> tuple[dict, list[str]]:
    """The state dict inside a released checkpoint, and the steps taken to get it.

    Accepts the layouts the released downstream code accepts: wrapped in ``state_dict`` /
    ``network_weights`` / ``net`` / ``student`` (and ``model``), keys prefixed with ``module.`` /
    ``backbone.``, and the ``swin_vit`` spelling of ``swinViT``.
    """
    steps = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise WeightsFormatError(f"no state dict found in the checkpoint (got {type(obj).__name__})")
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                steps.append(f"unwrapped '{key}'")
                break
        else:
            raise WeightsFormatError(
                "no state dict found in the checkpoint: expected tensors keyed by name, or one of "
                f"{', '.join(WRAPPER_KEYS)} holding them; top-level keys: {sorted(map(str, obj))[:10]}")
    sd = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                steps.append(f"stripped '{prefix}'")
                changed = True
    if any(k.startswith("swin_vit.") for k in sd):
        sd = {("swinViT." + k[len("swin_vit."):] if k.startswith("swin_vit.") else k): v for k, v in sd.items()}
        steps.append("renamed 'swin_vit' to 'swinViT'")
    return sd, steps


def _infer_args(arch: str, sd: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments read off the weights where the release leaves them open (Swin feature size)."""
    args: dict[str, Any] = {}
    w = sd.get("swinViT.patch_embed.proj.weight")
    if w is not None and arch.startswith("rasd3d_swin"):
        args.update(feature_size=int(w.shape[0]), in_channels=int(w.shape[1]))
        if "out.conv.conv.weight" in sd:
            args["out_channels"] = int(sd["out.conv.conv.weight"].shape[0])
    w = sd.get("model.0.conv.unit0.conv.weight")
    if w is not None and not arch.startswith("rasd3d_swin"):
        args["in_channels"] = int(w.shape[1])
        if "model.2.0.conv.weight" in sd:  # transposed conv: (in, out, *k)
            args["out_channels"] = int(sd["model.2.0.conv.weight"].shape[1])
    return args


def convert_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, arch: str, *,
    model_args: Mapping[str, Any] | None = None, license: str = "other", strict: bool = True,
    description: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Convert a released RaSD checkpoint (``RaSE_B.pth``, ...) into our format in ``out_dir``.

    The architecture's arguments are the registered defaults, with the Swin feature size and input
    channels read from the weights, overridden by ``model_args``. Loading is strict. Returns the
    output directory and a summary (steps, arguments, sha256 of source and result).
    """

    raw = read_checkpoint(checkpoint)
    sd, steps = unwrap_released_state_dict(raw)
    del raw
    args = _infer_args(arch, sd)
    args.update(model_args or {})
    in_chans = int(args.pop("in_channels", 1))
    model = create_model(arch, in_chans=in_chans, **args)
    try:
        report = load_state_dict_checked(model, sd, strict=strict, source=str(checkpoint))
    except StateDictMismatchError as err:
        hint = ""
        if any(k.startswith("swinViT.") for k in sd) and not arch.startswith("rasd3d_swin"):
            hint = ("\nThe checkpoint holds a Swin UNETR (swinViT.* keys), not the UNet "
                    f"{arch!r}: the released 2D pre-training script trains a 2D Swin UNETR, and "
                    "the released downstream code's shape-matching copy would load almost none "
                    "of it into the UNet.")
        raise StateDictMismatchError(f"{err}{hint}\nLayout steps applied: {', '.join(steps) or 'none'}; "
                                     "override architecture arguments with --model-arg KEY=VALUE.",
                                     report=err.report) from None
    src_sha = sha256_file(checkpoint)
    provenance = {
        "source": "converted released checkpoint",
        "source_file": Path(checkpoint).name,
        "source_sha256": src_sha,
        "layout_steps": steps,
        "release": "github.com/yweibs/RaSD",
    }
    out = save_pretrained(model, out_dir, provenance=provenance, license=license,
                          description=description or (
                              f"`{arch}` converted from the authors' released `{Path(checkpoint).name}` "
                              "(RaSD, pre-trained on synthetic data only). Licence: see the RaSD "
                              "release (github.com/yweibs/RaSD)."))
    return out, {"steps": steps, "model_args": model.rasd_config["model_args"], "source_sha256": src_sha,
                 "report": report.summary()}


def export_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, license: str = "apache-2.0",
    base_model: str | None = None, description: str | None = None,
) -> Path:
    """Turn a pre-training checkpoint into our weights format (docs/architecture.md contract).

    Rebuilds the model with :func:`model_from_checkpoint` and writes ``model.safetensors`` +
    ``config.json`` + ``README.md``: the same folder as the runner's own end-of-run export (which
    calls this function on its final checkpoint).
    """
    from rasd_hub.weights import save_pretrained

    model, provenance = model_from_checkpoint(checkpoint)
    return save_pretrained(model, out_dir, provenance=provenance, license=license,
                           base_model=base_model, description=description)


def model_from_checkpoint(checkpoint: str | os.PathLike):
    """The model a pre-training checkpoint holds, and the run's provenance.

    Reads ``model`` (state dict), ``model_config`` (the model's ``rasd_config``) and
    ``provenance`` with ``torch.load(weights_only=True)``, rebuilds the model from the config and
    loads the weights strictly. What the run recorded about its inputs (``normalization``, e.g.
    the measured moments of the synthetic images) is kept.
    """
    import torch

    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "model_config" not in ckpt:
        keys = sorted(map(str, ckpt))[:12] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise WeightsFormatError(
            f"{checkpoint} is not a pre-training checkpoint: it needs 'model', 'model_config' and "
            f"'provenance' (found {keys}). Convert released RaSE_*.pth files with `rasd hub convert`.")
    cfg = dict(ckpt["model_config"])
    if "architecture" not in cfg or "model_args" not in cfg:
        raise WeightsFormatError(f"{checkpoint}: model_config lacks 'architecture' / 'model_args' "
                                 "(it must be the model's rasd_config)")
    check_normalization(cfg.get("normalization"), f"{checkpoint}: model_config")
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG
        model = build_model(cfg["architecture"], cfg, {},
                            features_only=bool(cfg.get("features_only", False)))
    if cfg.get("normalization"):
        set_normalization(model, cfg["normalization"])
    sd, _ = unwrap_released_state_dict(ckpt["model"])
    load_state_dict_checked(model, sd, strict=True, source=str(checkpoint))
    provenance = dict(ckpt.get("provenance") or {})
    provenance.setdefault("checkpoint", Path(checkpoint).name)
    return model, provenance


_TAG = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def architecture_for_release(checkpoint: str | os.PathLike) -> str:
    """The architecture whose released checkpoint has this file name (``RaSE_B.pth`` ->
    ``rasd3d_swinb``); an error naming ``--arch`` otherwise."""
    from rasd_hub._registry import get_arch, list_architectures

    name = Path(checkpoint).name.lower()
    releases = {get_arch(a).released_checkpoint: a for a in list_architectures()
                if get_arch(a).released_checkpoint}
    for release, arch in releases.items():
        if release.lower() == name:
            return arch
    known = ", ".join(f"{r} -> {a}" for r, a in sorted(releases.items()))
    raise WeightsFormatError(f"cannot tell the architecture of {Path(checkpoint).name} from its name "
                             f"(released files: {known}); pass --arch ARCH")


def default_install_tag(config: Mapping[str, Any]) -> str:
    """``rase_b`` for weights converted from ``RaSE_B.pth``, else ``installed``."""
    source_file = (config.get("provenance") or {}).get("source_file")
    if source_file:
        tag = re.sub(r"[^a-z0-9_]+", "_", Path(source_file).stem.lower()).strip("_")
        if tag and _TAG.match(tag):
            return tag
    return "installed"


def install_weights(folder: str | os.PathLike, *, tag: str | None = None):
    """Install a weights folder on this machine as the tag ``ARCH.TAG`` (``rasd hub install``).

    The folder is validated (``config.json`` against the architecture, ``model.safetensors``
    against the sha256 its config records), copied to ``$RASD_HUB_HOME/installed/ARCH.TAG`` and
    recorded in the index with the sha256 of both files, so ``create_model(ARCH, pretrained=True)``
    loads it offline from then on (for an architecture that ships no weights it is the default
    tag) and refuses it if either file changes. Installing the same tag again replaces it.
    Returns the registered :class:`~rasd_hub.PretrainedCfg`.
    """
    from rasd_hub._install import index_path, installed_dir, read_index
    from rasd_hub._io import atomic_dir, write_json_atomic
    from rasd_hub._pretrained import PretrainedCfg
    from rasd_hub._registry import register_pretrained
    from rasd_hub.weights import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, load_weights_file, read_config

    src = Path(folder).expanduser()
    config = read_config(src)
    wname = config.get("weights", {}).get("file", WEIGHTS_NAME)
    recorded = config.get("weights", {}).get("sha256")
    if recorded:  # a copy that no longer matches its own config is not installed
        load_weights_file(src / wname, recorded)
    tag = tag or default_install_tag(config)
    if not _TAG.match(tag):
        raise WeightsFormatError(f"tag {tag!r}: use lower-case letters, digits and '_' (e.g. rase_b)")
    arch = config["architecture"]
    name = f"{arch}.{tag}"
    target = installed_dir() / name
    names = [n for n in (wname, CONFIG_NAME, CARD_NAME) if (src / n).is_file()]
    with atomic_dir(target, replaceable=(WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, wname)) as staging:
        for n in names:
            shutil.copyfile(src / n, staging / n)
    pins = {"model.safetensors" if n == wname else n: sha256_file(target / n)
            for n in (wname, CONFIG_NAME)}
    provenance = dict(config.get("provenance") or {}, installed_from=str(src.resolve()))
    entry = {"architecture": arch, "tag": tag, "path": str(target), "sha256": pins,
             "license": config.get("license", "other"), "installed_from": str(src.resolve()),
             "description": f"installed on this machine from {src.resolve()}",
             "provenance": provenance}
    index = read_index()
    index[name] = entry
    write_json_atomic(index_path(), {"format": "rasd_hub.installed", "installed": index})
    return register_pretrained(PretrainedCfg(
        architecture=arch, tag=tag, path=str(target), sha256=pins, license=entry["license"],
        description=entry["description"], provenance=provenance), replace=True)
