"""Turn ``--model NAME --init INIT`` into a network, refusing comparisons that would be unfair.

``INIT`` is ``scratch`` (random weights), a registry tag (``TAG`` or ``ARCH.TAG``, see
``rasd hub list``), ``hf-hub:ORG/REPO[@REV]`` or a local weights folder written by
``rasd_hub.save_pretrained`` / ``rasd hub export``. Every init must give the same architecture with
the same arguments as ``scratch`` (only the weights differ); otherwise :class:`InitError`.
Loading, checksums, stem adaptation for the channel count and the fresh head are rasd_hub's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnunet_plugin.evaluation.errors import InitError
from rasd_hub.errors import RasdError

__all__ = ["SCRATCH", "BuiltModel", "build_model", "source_label", "label_sha256"]

SCRATCH = "scratch"
# model_args that legitimately differ between a pre-trained checkpoint and the fine-tuned network
_ADAPTED_ARGS = ("in_channels", "out_channels")


@dataclass
class BuiltModel:
    model: Any  # torch.nn.Module
    normalization: dict  # what the weights were pre-trained with (config.json), or the default
    description: str  # resolved source: "scratch" or rasd_hub's label with sha256
    sha256: str = ""  # of the weights file ("" for scratch)


def source_label(label: str, sha256: str) -> str:
    """How a run names the weights it started from (``RunResult.source``, both backends):
    ``LABEL sha256 DIGITS`` with the first 12 digits; ``LABEL`` alone without a sha256."""
    return label + (f" sha256 {sha256[:12]}" if sha256 else "")


def label_sha256(source: str) -> str:
    """The sha256 digits of a :func:`source_label`, or "" (scratch, an unrecorded source)."""
    _, found, digits = source.rpartition(" sha256 ")
    return digits if found else ""


def _reword(err: RasdError, option: str, hint: str) -> None:
    """Name the offending option in rasd_hub's message, keeping the error's type (the ``rasd``
    command prints ``str(err)`` only, so a note would not be shown)."""
    if err.args and isinstance(err.args[0], str):
        err.args = (f"{option}: {err.args[0]} {hint}", *err.args[1:])


def _weights_name(arch: str, init: str) -> tuple[str, Any]:
    """(name, pretrained) arguments of ``create_model`` for a non-scratch ``init``: rasd_hub's
    resolver decides what ``init`` is (a bare ``TAG`` means ``ARCH.TAG``)."""
    from rasd_hub import LocalRef, parse_weights_ref

    ref = parse_weights_ref(init, architecture=arch)
    if isinstance(ref, LocalRef):
        return arch, str(ref.path)  # a weights folder or .safetensors file: rasd_hub says if missing
    return str(ref), True


def _comparable_args(config: dict) -> dict:
    return {k: v for k, v in config["model_args"].items() if k not in _ADAPTED_ARGS}


def build_model(model_name: str, init: str, num_classes: int | None, in_chans: int,
                head: str | None = None, new_head: str = "1x1") -> BuiltModel:
    """The network for ``init`` with ``num_classes`` outputs (``None`` keeps the weights' own
    output layer, as the probe needs) and ``in_chans`` inputs; ``head="classifier"`` puts global
    pooling and a linear layer on the encoder instead. ``new_head``: ``1x1`` is rasd_hub's
    ``num_classes`` (every layer kept, a 1x1 class head added), ``top-block`` re-initialises the
    network's output block with one channel per class instead (the study's round-1 baseline).
    The caller seeds torch first."""
    import rasd_hub

    classes: dict[str, Any] = {"num_classes": num_classes}
    if new_head == "top-block" and num_classes is not None and head is None:
        classes = {"out_channels": num_classes}
    try:
        arch, arch_source = rasd_hub.resolve_weights(model_name, False, need_weights=False)
        twin = rasd_hub.create_model(model_name, pretrained=False, in_chans=in_chans, head=head,
                                     **classes)
    except RasdError as err:
        _reword(err, f"--model {model_name!r}", "Give an architecture from `rasd hub list` "
                "(e.g. rasd2d_small), a weights folder or hf-hub:ORG/REPO.")
        raise
    if init == SCRATCH:
        normalization = ((arch_source.config or {}).get("normalization") if arch_source else None) \
            or twin.rasd_config["normalization"]
        return BuiltModel(twin, dict(normalization), SCRATCH)
    name, pretrained = _weights_name(arch, init)
    try:
        model = rasd_hub.create_model(name, pretrained=pretrained, in_chans=in_chans, head=head,
                                      **classes)
    except RasdError as err:
        _reword(err, f"--init {init!r}", "--init takes 'scratch', a tag from `rasd hub list`, "
                "hf-hub:ORG/REPO@REV or a weights folder (rasd_hub.save_pretrained / "
                "`rasd hub export`).")
        raise
    if model.rasd_config["architecture"] != twin.rasd_config["architecture"] or \
            _comparable_args(model.rasd_config) != _comparable_args(twin.rasd_config):
        raise InitError(
            f"--init {init!r} is a {model.rasd_config['architecture']} with arguments "
            f"{_comparable_args(model.rasd_config)}, but --model {model_name!r} is a "
            f"{twin.rasd_config['architecture']} with {_comparable_args(twin.rasd_config)}; a "
            "comparison needs one architecture for every init. Pass --model the weights' "
            "architecture (or the weights folder itself, so scratch gets the same arguments).")
    # rasd_hub copied the weights' own normalisation and provenance into rasd_config on loading
    provenance = model.rasd_config.get("pretrained") or {}
    sha = provenance.get("sha256", "")
    label = provenance.get("source", name)
    return BuiltModel(model, dict(model.rasd_config["normalization"]), source_label(label, sha), sha)
