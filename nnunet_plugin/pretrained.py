"""Which RaSD weights a trainer uses, and how they reach nnU-Net's network.

``RASD_WEIGHTS`` chooses the weights without a new trainer class:

* a registry name: ``rasd2d_small`` (its default tag) or ``rasd2d_small.TAG`` (``rasd hub list``);
* ``hf-hub:ORG/REPO[@REVISION]``: a Hub repo in rasd_hub's format;
* a local folder written by ``rasd_hub.save_pretrained`` / ``rasd hub export`` (``config.json`` +
  ``model.safetensors``).

Everything about loading (checksums, stem adaptation for ``in_chans``, a fresh head for
``num_classes``) is rasd_hub's job; this module asks it for a network with the dataset's channels
and classes and copies that state into nnU-Net's network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasd_hub.errors import RasdError, WeightsFormatError

ENV_VAR = "RASD_WEIGHTS"

_HINT = (f"Choose weights for nnU-Net with {ENV_VAR}: a weights folder written by "
         "rasd_hub.save_pretrained or `rasd hub export` (export RASD_WEIGHTS=/path/to/folder), a "
         "registry name from `rasd hub list`, or hf-hub:ORG/REPO@REVISION; then run "
         "nnUNetv2_train again. RaSDTrainerFromScratch trains the same network without weights.")


def _looks_like_path(source: str) -> bool:
    return (os.sep in source or "/" in source or source.startswith((".", "~"))) and \
        not source.startswith("hf-hub:")


def _check_path(source: str) -> None:
    if _looks_like_path(source) and not Path(source).expanduser().exists():
        raise WeightsFormatError(f"{ENV_VAR}={source}: no such folder. {_HINT}")


@dataclass
class PretrainedWeights:
    """Weights resolved and adapted to one dataset, held until the trainer copies them."""

    requested: str  # what the user or trainer asked for
    label: str  # rasd_hub's description of the resolved source (tag, repo@rev, folder)
    sha256: str
    config: dict[str, Any]  # rasd_config of the network built for the dataset
    state_dict: dict = field(repr=False)
    report: str = ""

    def describe(self) -> str:
        return f"{self.label} sha256 {self.sha256}"

    def record(self) -> dict:
        """Provenance kept in the plans (never needed to rebuild the network)."""
        return {"source": self.label, "requested": self.requested, "sha256": self.sha256}


def load_for_dataset(source: str, in_chans: int, num_classes: int) -> PretrainedWeights:
    """Build ``source``'s network for ``in_chans`` inputs and ``num_classes`` outputs with its
    weights (stem adapted, head new), verifying checksums. Raises rasd_hub's errors, with a note on
    how to point nnU-Net at other weights."""
    import rasd_hub

    _check_path(source)
    try:
        model = rasd_hub.create_model(source, pretrained=True, num_classes=num_classes,
                                      in_chans=in_chans)
    except RasdError as err:
        err.add_note(_HINT)
        raise
    # rasd_hub carries the weights' own normalisation and their source + sha256 in rasd_config
    config = dict(model.rasd_config)
    report = getattr(model, "load_report", None)
    return PretrainedWeights(
        requested=source, label=config["pretrained"]["source"], sha256=config["pretrained"]["sha256"],
        config=config, state_dict=model.state_dict(),  # keeps the tensors, not the module
        report=report.summary() if report is not None else "")


def architecture_config(source: str) -> dict[str, Any]:
    """``rasd_config`` of ``source``'s architecture without loading (or needing) its weights.

    For an architecture name this is the registered default; for a folder or Hub repo it follows
    the weights' config (so a from-scratch twin matches the pre-trained network exactly).
    """
    import rasd_hub
    import torch

    _check_path(source)
    arch, src = rasd_hub.resolve_weights(source, False, need_weights=False)
    config_json = (src.config if src is not None else None) or {}
    name = source if src is not None else arch
    # Only the config is needed: the meta device allocates nothing. Some MONAI networks call
    # .item() while building (Swin UNETR's drop-path rates), which meta tensors refuse.
    try:
        with torch.device("meta"):
            model = rasd_hub.create_model(name, pretrained=False)
    except (RuntimeError, NotImplementedError):
        model = rasd_hub.create_model(name, pretrained=False)
    config = dict(model.rasd_config)
    if config_json.get("normalization"):
        config["normalization"] = config_json["normalization"]
    return config


def copy_into(net, weights: PretrainedWeights) -> str:
    """Copy the adapted weights into ``net`` in place (strict: the same architecture by
    construction) so that the optimiser's references to its parameters stay valid."""
    net.load_state_dict(weights.state_dict, strict=True)
    return weights.report
