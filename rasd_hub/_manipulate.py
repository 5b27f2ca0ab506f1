"""Model manipulation: adapting saved weights to the model they load into, and replacing a
model's config (timm's ``_manipulate``).

- :func:`adapt_in_chans`: a stem weight for another input-channel count (2D and 3D convs);
- :func:`adapt_state_dict`: the intentional differences between saved weights and a model
  (dropped decoder for ``features_only``, fresh head for ``num_classes``, adapted stem);
- :func:`set_normalization`: record on a model the input scaling its weights expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from rasd_hub._validate import check_normalization
from rasd_hub.errors import RasdValueError
from rasd_hub.weights import LoadReport

__all__ = ["adapt_in_chans", "adapt_state_dict", "set_normalization", "set_pretrained_source"]


def adapt_in_chans(weight, in_chans: int):
    """Adapt a conv weight ``(out, c, *k)`` to ``in_chans`` input channels.

    One target channel sums the source channels; otherwise the source channels are repeated
    cyclically and rescaled by ``c / in_chans``, so a constant image gives the same response.
    """
    src = weight.shape[1]
    if in_chans == src:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / src)
    new = weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_chans]
    return (new * (src / in_chans)).contiguous()


def adapt_state_dict(
    state_dict: dict, model, source_config: Mapping[str, Any] | None = None
) -> tuple[dict, LoadReport]:
    """Apply the intentional changes between saved weights and ``model`` (a rasd_hub model).

    - ``features_only`` model: keys of the decoder it lacks are dropped;
    - different ``out_channels`` (``num_classes``): the head's keys are left out (fresh head);
    - different ``in_chans``: the stem weights are adapted with :func:`adapt_in_chans`.
    """
    cfg = model.rasd_config
    src = dict(source_config or {})
    report = LoadReport()
    sd = dict(state_dict)
    own = model.state_dict()

    for prefix in getattr(model, "dropped_prefixes", ()):
        for k in [k for k in sd if k.startswith(prefix)]:
            del sd[k]
            report.dropped.append(k)

    head = cfg.get("head")
    src_out = src.get("out_channels")
    if head and src_out is not None and cfg.get("out_channels") != src_out:
        for k in [k for k in sd if k == head or k.startswith(head + ".")]:
            del sd[k]
        report.reinitialized = [k for k in own if k.startswith(head + ".")]

    src_in = src.get("in_chans")
    if src_in is not None and src_in != cfg["in_chans"]:
        for k in cfg.get("stem", []):
            if k in sd and k in own and sd[k].ndim >= 3 and sd[k].shape[1] == src_in:
                sd[k] = adapt_in_chans(sd[k], cfg["in_chans"])
                report.adapted.append(k)
    return sd, report


def _require_cfg(model):
    if getattr(model, "pretrained_cfg", None) is None:
        raise RasdValueError(f"{type(model).__name__} has no pretrained_cfg: build it with "
                             "rasd_hub.create_model(NAME)")


def set_normalization(model, normalization: Mapping[str, Any]) -> None:
    """Record the input scaling ``model``'s weights expect (e.g. the measured moments of the
    synthetic pre-training images); checked first, so an unknown method never slips through."""
    _require_cfg(model)
    check_normalization(normalization, f"normalization for {model.pretrained_cfg.architecture}")
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, normalization=dict(normalization))


def set_pretrained_source(model, *, source: str, sha256: str, ref: str | None, config: Mapping | None,
                          hf_hub_id: str | None = None, revision: str | None = None) -> None:
    """Record on ``model`` where its loaded weights came from: their source, sha256, a name that
    resolves to them again, and what their ``config.json`` says about them (normalisation,
    licence, provenance)."""
    _require_cfg(model)
    config = config or {}
    changes: dict[str, Any] = dict(source=source, sha256={"model.safetensors": sha256}, weights_ref=ref)
    if config.get("normalization"):
        changes["normalization"] = dict(config["normalization"])
    if config.get("license"):
        changes["license"] = config["license"]
    if config.get("provenance"):
        changes["provenance"] = dict(config["provenance"])
    if hf_hub_id:
        changes["hf_hub_id"], changes["revision"] = hf_hub_id, revision
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, **changes)
