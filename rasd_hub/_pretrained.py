"""The pretrained config: one frozen record of what a model (or a set of weights) is.

timm keeps a ``PretrainedCfg`` per ``arch.tag`` and puts one on every model it builds; rasd_hub does
the same with one dataclass for both uses. A registered tag fills in where the weights are
(``hf_hub_id`` + ``revision`` + the ``sha256`` of every file read, a ``file`` inside the package, or
a local ``path``) and what they are (licence, paper, provenance). A built model's
``model.pretrained_cfg`` adds the architecture's arguments, the input it expects (``input_size``,
``input_divisor``, ``normalization`` incl. the measured moments of the synthetic pre-training
images), its ``first_conv`` and ``classifier`` keys, and, when weights were loaded, their source.

Frozen: a model's config changes only by replacing it (:func:`dataclasses.replace`, e.g. in
:func:`rasd_hub.set_normalization`), never by editing a shared dict in place.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

__all__ = ["PretrainedCfg", "PAPER", "RASD_CONFIG_VERSION"]

#: the paper every RaSD model comes from
PAPER = "RaSD: randomized synthesis and disentangling for medical-image foundation models (github.com/yweibs/RaSD)"
RASD_CONFIG_VERSION = 1


def _plain(value: Any) -> Any:
    """A deep, JSON-shaped copy (tuples become lists), so no caller can edit the frozen record."""
    return json.loads(json.dumps(value)) if value is not None else None


@dataclass(frozen=True)
class PretrainedCfg:
    """What a model is and where its weights come from.

    Where the weights are (a registered tag needs one of ``file``, ``path``, ``hf_hub_id``):
        architecture: registered architecture name.
        tag: weights tag; the model name is ``architecture.tag``.
        hf_hub_id: Hub repo in our format (``ORG/REPO``).
        revision: the commit ``hf_hub_id`` is pinned to (40 hex digits).
        sha256: sha256 per file read (``model.safetensors``, ``config.json``).
        file: a weights directory inside the ``rasd_hub`` package (relative to it).
        path: a local weights directory (site-specific or ``rasd hub install``-ed weights).
        source: on a built model, where its loaded weights came from (``None``: random init).
        weights_ref: on a built model, a name that resolves to the same weights again.

    What the model expects (filled in on built models):
        model_args: the architecture's constructor arguments.
        features_only: the model is the encoder returning multi-scale maps.
        head: ``None`` (dense output) or ``"classifier"`` (pooled encoder + linear layer).
        spatial_dims: 2 or 3.
        in_chans / num_classes: input channels and output channels (classes; 0 for
            ``features_only``).
        input_size: a typical input, channels first (``(1, 128, 128, 128)``).
        input_divisor / min_input_size: spatial sizes must be multiples of / at least these.
        first_conv: state-dict keys of the weights that read the input image.
        classifier: state-dict prefix of the output layer.
        normalization: the input scaling the weights were pre-trained with (``method``, ``range``,
            measured ``mean`` / ``std`` of the synthetic images).
        feature_channels / feature_reductions: of the maps a ``features_only`` model returns.

    What they are:
        license, description, paper, provenance (how the weights were made: synthesis preset and
        config, seed, steps, code version, source file and its sha256).
    """

    architecture: str
    tag: str | None = None
    hf_hub_id: str | None = None
    revision: str | None = None
    sha256: Mapping[str, str] = field(default_factory=dict)
    file: str | None = None
    path: str | None = None
    source: str | None = None
    weights_ref: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    features_only: bool = False
    head: str | None = None
    spatial_dims: int | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    input_size: tuple[int, ...] = ()
    input_divisor: int | None = None
    min_input_size: int | None = None
    first_conv: tuple[str, ...] = ()
    classifier: str | None = None
    normalization: Mapping[str, Any] | None = None
    feature_channels: tuple[int, ...] = ()
    feature_reductions: tuple[int, ...] = ()
    license: str = "apache-2.0"
    description: str = ""
    paper: str = PAPER
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # copies in, so that the caller's dicts and this record never share state
        for name in ("sha256", "model_args", "provenance", "normalization"):
            object.__setattr__(self, name, _plain(getattr(self, name)))
        for name in ("input_size", "first_conv", "feature_channels", "feature_reductions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in ("sha256", "model_args", "provenance", "normalization"):
            return copy.deepcopy(value)  # reading gives a copy: the record stays as built
        return value

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def has_weights(self) -> bool:
        return bool(self.file or self.path or self.hf_hub_id or self.source)

    @property
    def where(self) -> str:
        """Where the weights of a registered tag are, in one string (``rasd hub list``)."""
        if self.file:
            return f"package:{self.file}"
        if self.path:
            return self.path
        if self.hf_hub_id:
            return f"hf-hub:{self.hf_hub_id}@{self.revision}"
        return self.source or "-"

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON values."""
        return _plain(asdict(self))

    def timm_fields(self) -> dict[str, Any]:
        """The fields under timm's names, for code that reads a pretrained config as a dict
        (``timm.data.resolve_model_data_config``). ``mean`` / ``std`` are 0 / 1: the network
        takes images already scaled as ``normalization`` says (into [0, 1], which timm's
        ``ToTensor`` also does), not ImageNet-standardised ones."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        channels = self.in_chans or 1
        out.update(mean=(0.0,) * channels, std=(1.0,) * channels, interpolation="bilinear",
                   crop_pct=1.0, crop_mode="center", tag=self.tag, hf_hub_id=self.hf_hub_id)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access to :meth:`timm_fields`."""
        return self.timm_fields().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.timm_fields()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.timm_fields()

    def rasd_config(self) -> dict[str, Any]:
        """The legacy ``rasd_config`` dict (a copy): the keys ``config.json`` and training
        checkpoints store (``docs/architecture.md``)."""
        cfg: dict[str, Any] = {
            "config_version": RASD_CONFIG_VERSION,
            "architecture": self.architecture,
            "model_args": self.model_args,
            "features_only": self.features_only,
            "spatial_dims": self.spatial_dims,
            "in_chans": self.in_chans,
            "out_channels": None if self.features_only else self.num_classes,
            "input_divisor": self.input_divisor,
            "min_input_size": self.min_input_size,
            "head": self.classifier,
            "stem": list(self.first_conv),
            "normalization": self.normalization,
        }
        if self.head:
            cfg["head_type"] = self.head
        if self.features_only:
            cfg["feature_channels"] = list(self.feature_channels)
            cfg["feature_reductions"] = list(self.feature_reductions)
        if self.source:
            cfg["pretrained"] = {"source": self.source, "sha256": self.sha256.get("model.safetensors")}
        return cfg
