"""Which RaSD weights a fold starts from, and how they reach nnU-Net's network.

The plans name the weights (``rasd nnunet plan --weights W`` records their identity: a source that
resolves again, the architecture and the sha256 of ``model.safetensors``). A source is

* a registry name: ``rasd2d_small`` (its default tag, recorded as ``rasd2d_small.TAG``) or
  ``ARCH.TAG`` (``rasd hub list --pretrained``);
* ``hf-hub:ORG/REPO[@REVISION]`` (recorded with the commit it resolved to);
* a local folder written by ``rasd_hub.save_pretrained`` / ``rasd hub export`` (recorded as an
  absolute path).

``RASD_WEIGHTS`` replaces the plans' weights for one training run (same architecture required);
what a fold really started from is kept in its checkpoint (:class:`RaSDNetwork` extra state).

Everything about loading (checksums, stem adaptation for ``in_chans``, a fresh head for
``num_classes``) is rasd_hub's job; this module asks it for a network with the dataset's channels
and classes and copies that state into nnU-Net's network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnunet_plugin.errors import WeightsMismatchError
from nnunet_plugin.network import comparable_model_args
from rasd_hub.errors import RasdError

__all__ = ["ENV_VAR", "PretrainedWeights", "load_weights", "weights_for_fold", "copy_into",
           "broadcast_from_rank0"]

ENV_VAR = "RASD_WEIGHTS"
#: seed of the new output layer, the same on every rank and in every run
HEAD_SEED = 0

HINT = ("Weights are a registry name from `rasd hub list --pretrained`, hf-hub:ORG/REPO@REVISION, or a "
        "folder written by `rasd hub export` / rasd_hub.save_pretrained. Plan them with `rasd nnunet "
        "plan -d DATASET --weights W`; RaSDTrainerFromScratch trains the same plans without weights.")


@dataclass
class PretrainedWeights:
    """Weights resolved and adapted to one dataset, held until the trainer copies them."""

    identity: dict[str, Any]  # requested, source, architecture, sha256 (+ revision on the Hub)
    config: dict[str, Any]  # rasd_config of the network built for the dataset
    state_dict: dict = field(repr=False)
    report: str = ""

    def describe(self) -> str:
        return f"{self.identity['source']} sha256 {self.identity['sha256']}"


def load_weights(source: str, in_chans: int, num_classes: int | None) -> PretrainedWeights:
    """Build ``source``'s network for ``in_chans`` inputs and ``num_classes`` outputs with its
    weights (stem adapted, head new and seeded), verifying checksums.

    Raises rasd_hub's errors, with a note on how to choose other weights.
    """
    import rasd_hub
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_SEED)  # the same new head on every rank (DDP) and every run
            model = rasd_hub.create_model(source, pretrained=True, num_classes=num_classes,
                                          in_chans=in_chans)
    except RasdError as err:
        err.add_note(HINT)
        raise
    config = dict(model.rasd_config)
    # rasd_hub's resolver records a name that resolves to these weights again: the default tag
    # spelt out, a folder's absolute path, an hf-hub name with the commit it resolved to
    identity = {"requested": source, "source": model.pretrained_cfg.weights_ref,
                "architecture": config["architecture"], "sha256": config["pretrained"]["sha256"]}
    if model.pretrained_cfg.revision:
        identity["revision"] = model.pretrained_cfg.revision
    report = getattr(model, "load_report", None)
    return PretrainedWeights(identity, config, model.state_dict(),
                             report.summary() if report is not None else "")


def weights_for_fold(planned: dict[str, Any], arch_kwargs: dict[str, Any], in_chans: int,
                     num_classes: int, override: str | None = None) -> PretrainedWeights:
    """The weights a fold starts from: what the plans name (sha256 checked) or ``override``
    (``RASD_WEIGHTS``), which must be the plans' architecture with the plans' arguments."""
    source = override or planned["source"]
    weights = load_weights(source, in_chans, num_classes)
    if override is None and weights.identity["sha256"] != planned["sha256"]:
        raise WeightsMismatchError(
            f"the plans name weights {planned['source']} with sha256 {planned['sha256']}, but that "
            f"source now holds sha256 {weights.identity['sha256']}: the weights changed after "
            "planning. Plan again (`rasd nnunet plan ... --weights ...`) to train with the new "
            f"weights, or restore the planned file. {HINT}")
    planned_arch = (arch_kwargs["rasd_architecture"], arch_kwargs["rasd_model_args"])
    found_arch = (weights.config["architecture"], comparable_model_args(weights.config["model_args"]))
    if found_arch != planned_arch:
        raise WeightsMismatchError(
            f"{ENV_VAR}={source} holds a {found_arch[0]} with arguments {found_arch[1]}, but the "
            f"plans describe a {planned_arch[0]} with {planned_arch[1]}. Plan these weights into "
            f"their own plans: `rasd nnunet plan -d DATASET --weights {source} --plans-name "
            "RaSDPlans_OTHER`, then train with -p RaSDPlans_OTHER.")
    return weights


def copy_into(network, weights: PretrainedWeights, input_scale, input_shift) -> None:
    """Copy the adapted weights into a :class:`~nnunet_plugin.network.RaSDNetwork` in place (the
    optimiser's references to its parameters stay valid) and give it the input mapping that fits
    them; strict, since both come from one architecture."""
    network.net.load_state_dict(weights.state_dict, strict=True)
    network.set_input_mapping(input_scale, input_shift)
    network.pretrained = dict(weights.identity)


def broadcast_from_rank0(module) -> None:
    """Make every rank hold rank 0's parameters and buffers (after weights were copied into a
    network that DDP had already synchronised at construction)."""
    import torch
    import torch.distributed as dist

    for value in module.state_dict().values():
        if isinstance(value, torch.Tensor):
            dist.broadcast(value, src=0)
