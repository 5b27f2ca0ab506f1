"""``create_model`` and ``load``: a name to an architecture and (optionally) verified weights.

Names: ``arch`` (registered architecture), ``arch.tag`` (pretrained config), ``hf-hub:ORG/REPO[@REV]``
(any Hub repo in our format) or a local weights directory (``rasd_hub._sources`` decides which).
``pretrained`` is ``False``, ``True`` or a path (weights directory or ``.safetensors`` file).
Resolution order for weights: an explicit file/directory, the local Hub cache (no network when
pinned to a commit and cached), the Hub.
"""

from __future__ import annotations

import os
from typing import Any

from rasd_hub._io import sha256_file
from rasd_hub._manipulate import adapt_state_dict, set_pretrained_source
from rasd_hub._registry import get_arch, get_pretrained_cfg
from rasd_hub._sources import (
    HF_HUB_PREFIX, HubRef, LocalRef, architecture_of, local_source, parse_weights_ref, resolve_ref,
)
from rasd_hub._validate import check_model_args
from rasd_hub.errors import RasdValueError, WeightsFormatError
from rasd_hub.models.classifier import RasdClassifier
from rasd_hub.weights import WeightsSource, load_state_dict_checked, load_weights_file

__all__ = ["create_model", "load", "resolve_weights", "build_model", "load_into", "WeightsSource",
           "HF_HUB_PREFIX", "HEADS"]

#: ``head=`` values: ``None`` keeps the architecture's dense output, ``"classifier"`` pools the
#: encoder's deepest map into a linear layer (:class:`rasd_hub.models.RasdClassifier`)
HEADS = (None, "classifier")


def resolve_weights(
    name: str, pretrained: bool | str | os.PathLike = True, *, offline: bool | None = None,
    cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
    need_weights: bool = True,
) -> tuple[str, WeightsSource | None]:
    """Resolve ``name`` / ``pretrained`` to ``(architecture, weights source or None)``.

    With ``need_weights=False`` an ``hf-hub:`` name or a directory only provides the config.
    """
    ref = parse_weights_ref(name)
    explicit = pretrained if isinstance(pretrained, (str, os.PathLike)) else None
    if isinstance(ref, (HubRef, LocalRef)):
        if explicit is not None:
            kind = "an hf-hub name" if isinstance(ref, HubRef) else "a weights folder"
            raise RasdValueError(f"{name}: give either {kind} or a pretrained path, not both")
        src = resolve_ref(ref, offline=offline, cache_dir=cache_dir, endpoint=endpoint,
                          need_weights=need_weights)
        return architecture_of(ref, src), src
    arch = ref.architecture
    if explicit is not None:
        src = local_source(explicit)
        if src.config and src.config["architecture"] != arch:
            raise WeightsFormatError(
                f"weights in {explicit} are for {src.config['architecture']!r}, not {arch!r}; "
                f"use create_model({src.config['architecture']!r}, pretrained=...) or load({str(explicit)!r})"
            )
        return arch, src
    if not pretrained:
        if ref.tag:
            get_pretrained_cfg(str(ref))  # a bad tag is an error even without weights
        return arch, None
    return arch, resolve_ref(ref, offline=offline, cache_dir=cache_dir, endpoint=endpoint)


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    *,
    head: str | None = None,
    out_indices=None,
    drop_rate: float = 0.0,
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
        num_classes: output channels (dense model) or classes (``head="classifier"``); a value
            different from the weights' gives a fresh head.
        in_chans: input channels (default: the weights' config for hf-hub names, folders and
            tags, else the architecture's, 1); differing from the weights' adapts the stem
            weights (repeated and rescaled by ``1/in_chans``).
        features_only: return the encoder, whose forward gives a list of multi-scale feature maps
            (``model.feature_info`` has their channels and reductions).
        head: ``"classifier"``: the (pre-trained) encoder + global average pooling + a linear
            layer of ``num_classes`` outputs (2D and 3D), for image-level labels.
        out_indices: with ``features_only``, which maps to return (timm's convention).
        drop_rate: dropout before the classifier's linear layer.
        strict: raise on any missing, unexpected or reshaped key (one message lists them all);
            ``False`` loads the matching keys and warns.
        offline: never touch the network (default: ``HF_HUB_OFFLINE``).
        cache_dir: Hub cache directory (default: the huggingface_hub cache).
        endpoint: Hub endpoint or mirror URL (default: ``HF_ENDPOINT``).
        **kwargs: architecture arguments (e.g. ``feature_size=24``, ``dropout=0.1``).

    Returns an ``nn.Module`` with timm's interface and a frozen ``pretrained_cfg``.
    """
    if head not in HEADS:
        raise RasdValueError(f"head={head!r}: use None (the dense output) or 'classifier'")
    if head == "classifier":
        if features_only:
            raise RasdValueError("head='classifier' and features_only=True exclude each other")
        if num_classes is None:
            raise RasdValueError("head='classifier' needs num_classes (the number of image labels)")
        encoder = create_model(name, pretrained, in_chans=in_chans, features_only=True, strict=strict,
                               offline=offline, cache_dir=cache_dir, endpoint=endpoint, **kwargs)
        return RasdClassifier(encoder, int(num_classes), drop_rate=drop_rate)
    arch, src = resolve_weights(name, pretrained, offline=offline, cache_dir=cache_dir,
                                endpoint=endpoint, need_weights=bool(pretrained))
    model = build_model(arch, src.config if src else None, kwargs, num_classes=num_classes,
                        in_chans=in_chans, features_only=features_only, out_indices=out_indices)
    if src is not None and pretrained:
        return load_into(model, src, strict=strict)
    return model


def build_model(arch: str, config: dict | None, kwargs: dict, *, num_classes=None, in_chans=None,
                features_only=False, out_indices=None):
    """An architecture with random weights, its arguments from ``config`` (a validated
    ``config.json``) overridden by ``kwargs``, ``num_classes`` and ``in_chans``; the final
    arguments are checked (types, ranges, a parameter ceiling) before anything is allocated."""
    if features_only and num_classes is not None:
        raise RasdValueError("num_classes has no meaning with features_only=True (there is no head)")
    spec = get_arch(arch)
    args: dict[str, Any] = dict(config["model_args"]) if config else {}
    args.update(kwargs)
    if in_chans is not None:
        args["in_channels"] = in_chans
    # architectures with a ``head_channels`` argument put a 1x1 class head on their embedding
    # (their entry point takes num_classes); the others end in num_classes output channels
    class_head = num_classes is not None and "head_channels" in ((spec.args_schema or {}).get("args") or {})
    if num_classes is not None and not class_head:
        args["out_channels"] = num_classes
    check_model_args(arch, args, spec.args_schema, where="arguments")
    head_type = (config or {}).get("head_type")
    if head_type == "classifier":  # a saved classifier: its encoder and a linear layer
        encoder = spec.fn(features_only=True, **{k: v for k, v in args.items() if k != "out_channels"})
        classes = num_classes if num_classes is not None else config["out_channels"]
        return RasdClassifier(encoder, int(classes))
    if class_head:
        args["num_classes"] = num_classes
    return spec.fn(features_only=bool(features_only), out_indices=out_indices, **args)


def _config_from_state_dict(model, state_dict) -> dict[str, Any]:
    """For a bare .safetensors file without config.json: infer in/out channels from shapes."""
    cfg: dict[str, Any] = {}
    rasd_config = model.rasd_config
    stem = rasd_config.get("stem") or []
    if stem and stem[0] in state_dict:
        cfg["in_chans"] = int(state_dict[stem[0]].shape[1])
    head = rasd_config.get("head")
    if head:
        own = model.state_dict()
        for k in own:
            if k.startswith(head + ".") and (k not in state_dict or state_dict[k].shape != own[k].shape):
                cfg["out_channels"] = -1  # differs or absent: the head is re-initialised
                break
        else:
            cfg["out_channels"] = rasd_config.get("out_channels")
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
    options = {"features_only": bool(cfg.get("features_only", False)), "num_classes": None,
               "in_chans": None, "out_indices": None}
    options.update({k: kwargs.pop(k) for k in list(options) if k in kwargs})
    model = build_model(arch, src.config, kwargs, **options)
    return load_into(model, src, strict=strict)


def load_into(model, src: WeightsSource, *, strict: bool = True):
    """Load resolved weights into a built model: verify, read (memory-mapped), adapt, assign.

    The safetensors file is memory-mapped and its tensors are assigned to the model (not copied),
    so loading never holds two copies of the weights; pages are copied on write when trained.
    """
    state_dict = load_weights_file(src.weights_file, src.expected_sha256)
    source_cfg = src.config or _config_from_state_dict(model, state_dict)
    state_dict, report = adapt_state_dict(state_dict, model, source_cfg)
    load_state_dict_checked(model, state_dict, strict=strict, report=report, source=src.label)
    del state_dict
    # provenance is always complete: a bare file with no recorded hash gets hashed here; what the
    # weights were trained on (e.g. measured input moments) travels with them
    sha256 = src.verified_sha256 or src.expected_sha256 or sha256_file(src.weights_file)
    set_pretrained_source(model, source=src.label, sha256=sha256, ref=src.ref, config=src.config,
                          hf_hub_id=src.repo_id, revision=src.revision)
    model.load_report = report
    return model
