"""Pretrained configs: where each ``arch.tag``'s weights are, and what they are (timm style).

A tag exists only for weights the project has actually produced or converted: no placeholders.
Sources, in priority order: ``file`` (a weights directory shipped inside the rasd_hub package),
``path`` (a local weights directory), ``hf_hub_id`` (a Hub repo pinned to a commit, with the
sha256 of every file we read). The first tag registered for an architecture is its default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rasd_hub.errors import RasdValueError, UnknownModelError, WeightsNotAvailableError

__all__ = ["PretrainedCfg", "register_pretrained", "get_pretrained_cfg", "list_pretrained",
           "default_tag", "how_to_get_weights"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of pretrained weights for an architecture.

    Args:
        architecture: registered architecture name.
        tag: weights tag; the model name is ``architecture.tag``.
        hf_hub_id: Hub repo in our format (``ORG/REPO``).
        revision: the commit it is pinned to (40 hex digits; required with ``hf_hub_id``).
        sha256: sha256 per file read from the repo; ``model.safetensors`` is required.
        file: a weights directory inside the ``rasd_hub`` package (relative to it).
        path: a local weights directory (for site-specific registrations).
        license: licence of the weights (Hub licence id).
        description: one line for ``rasd hub list``.
        provenance: how the weights were made (preset, steps, seed, code version, source file).
    """

    architecture: str
    tag: str
    hf_hub_id: str | None = None
    revision: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    file: str | None = None
    path: str | None = None
    license: str = "apache-2.0"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not (self.file or self.path or self.hf_hub_id):
            raise RasdValueError(f"pretrained config {self.name}: no source (file, path or hf_hub_id)")
        if self.hf_hub_id:
            if not (self.revision and _COMMIT.match(self.revision)):
                raise RasdValueError(f"pretrained config {self.name}: pin hf_hub_id to a 40-hex commit")
            if not _SHA256.match(self.sha256.get("model.safetensors", "")):
                raise RasdValueError(f"pretrained config {self.name}: needs the sha256 of model.safetensors")

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}"


_CFGS: dict[str, PretrainedCfg] = {}


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    """Add a pretrained config (the first one of an architecture becomes its default)."""
    if cfg.name in _CFGS:
        raise RasdValueError(f"pretrained config {cfg.name} registered twice")
    _CFGS[cfg.name] = cfg
    return cfg


def list_pretrained(pattern: str | None = None) -> list[str]:
    """``arch.tag`` names that have weights."""
    import fnmatch

    from rasd_hub._registry import _ensure_loaded

    _ensure_loaded()
    names = sorted(_CFGS)
    return [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)
            or fnmatch.fnmatchcase(n.split(".")[0], pattern)]


def default_tag(architecture: str) -> PretrainedCfg | None:
    for cfg in _CFGS.values():
        if cfg.architecture == architecture:
            return cfg
    return None


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config of ``arch.tag``; a bare ``arch`` gives its default tag."""
    from rasd_hub._registry import get_arch, suggest

    arch, _, tag = name.partition(".")
    get_arch(arch)  # unknown architecture: raises with suggestions
    if not tag:
        cfg = default_tag(arch)
        if cfg is None:
            raise WeightsNotAvailableError(how_to_get_weights(arch))
        return cfg
    try:
        return _CFGS[name]
    except KeyError:
        tags = [n for n in _CFGS if n.startswith(arch + ".")]
        hint = suggest(name, tags) or (f" Tags with weights: {', '.join(tags)}." if tags else "")
        raise UnknownModelError(f"no pretrained weights tagged {name!r}.{hint}\n"
                                + how_to_get_weights(arch, header=False)) from None


def how_to_get_weights(architecture: str, header: bool = True) -> str:
    """The message that says exactly how to obtain weights for ``architecture``."""
    from rasd_hub._registry import get_arch

    spec = get_arch(architecture)
    lines = [f"no pretrained weights are registered for {architecture!r} yet."] if header else []
    lines.append("To get them:")
    n = 1
    if spec.released_checkpoint:
        lines.append(
            f"  {n}. convert the authors' released checkpoint ({spec.released_checkpoint}, from the "
            f"RaSD release at github.com/yweibs/RaSD):\n"
            f"       rasd hub convert {spec.released_checkpoint} WEIGHTS_DIR --arch {architecture}")
        n += 1
    alt = "or " if n > 1 else ""
    if spec.pretrain_preset:
        lines.append(
            f"  {n}. {alt}pre-train it yourself and export the checkpoint:\n"
            f"       rasd pretrain --preset {spec.pretrain_preset} ...\n"
            f"       rasd hub export RUN_DIR/checkpoints/step_XXXXXXX.pt WEIGHTS_DIR")
    else:
        lines.append(
            f"  {n}. {alt}pre-train it with `rasd pretrain` (no preset ships for {architecture}; see "
            "`rasd pretrain --help`) and export the checkpoint:\n"
            "       rasd hub export RUN_DIR/checkpoints/step_XXXXXXX.pt WEIGHTS_DIR")
    lines.append(
        f"then load them with rasd_hub.load('WEIGHTS_DIR') or "
        f"rasd_hub.create_model('{architecture}', pretrained='WEIGHTS_DIR'); weights already on "
        f"the Hub load with rasd_hub.load('hf-hub:ORG/REPO@REVISION').")
    return "\n".join(lines)


# -- registered weights ------------------------------------------------------------------------
# A tag is added here only together with weights that exist (no placeholders;
# tests/test_models.py::test_no_placeholder_pretrained_tags checks each one). Files inside the
# package need the package-data pattern in pyproject.toml.

register_pretrained(PretrainedCfg(
    architecture="rasd2d_small",
    tag="synth10k_cpu",
    file="pretrained_weights/rasd2d_small.synth10k_cpu",
    sha256={"model.safetensors": "6ecadef9c455ea8abbf21b1c48d5b376fcab7b24aa2076802eeb7fe392250dc4"},
    description="10k PDL steps on synthetic 64x64 images (official synthesis), 2-vCPU CPU, 15 min; "
                "shipped in the package",
    provenance={"preset": "rasd2d_small", "steps": 10_000, "batch_size": 8, "seed": 0,
                "device": "cpu (2 vCPUs)", "wall_seconds": 873.4, "code_version": "rasd-hub 0.1.0"},
))

register_pretrained(PretrainedCfg(
    architecture="rasd3d_small",
    tag="synth2300_h200",
    file="pretrained_weights/rasd3d_small.synth2300_h200",
    sha256={"model.safetensors": "af83810931c34a44e3bf47481c6cd2556e907888d33981c3015f3c34cb15efcf"},
    description="2,300 PDL steps on synthetic 64^3 volumes (official synthesis, 6 classes, batch 8), "
                "one H200, 142 s; shipped in the package",
    provenance={"preset": "rasd3d_small", "steps": 2_300, "batch_size": 8, "size": 64,
                "num_classes": 6, "seed": 0, "device": "cuda (NVIDIA H200)", "precision": "bf16",
                "wall_seconds": 141.9, "code_version": "rasd-hub 0.1.0"},
))
