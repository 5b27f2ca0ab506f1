"""Our weights format and state-dict loading.

A weights directory (or Hub repo) holds ``model.safetensors``, ``config.json`` (the model's
``rasd_config`` plus licence, provenance and the weights file's sha256) and a ``README.md`` model
card. Loading is strict by default: every missing, unexpected or reshaped key is reported in one
message. Intentional changes (a new head for ``num_classes``, adapted stem weights for
``in_chans``, a dropped decoder for ``features_only``) are recorded in the report, not errors.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import rasd_hub.models  # noqa: F401  (registers the architectures config.json is checked against)
from rasd_hub._io import atomic_dir, sha256_file
from rasd_hub._registry import get_arch
from rasd_hub._validate import NORMALIZATION_METHODS, check_config, check_normalization
from rasd_hub.errors import ChecksumMismatchError, StateDictMismatchError, WeightsFormatError

__all__ = [
    "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME", "FORMAT", "LoadReport", "WeightsSource",
    "save_pretrained", "read_config", "load_weights_file", "load_state_dict_checked", "model_card",
    "NORMALIZATION_METHODS", "check_normalization", "tensor_aliases",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
FORMAT = "rasd_hub.weights"
FORMAT_VERSION = 1

# rasd_config keys copied into config.json (and read back from it)
_CONFIG_KEYS = ("architecture", "model_args", "features_only", "spatial_dims", "in_chans",
                "out_channels", "input_divisor", "min_input_size", "head", "stem", "normalization")


@dataclass
class WeightsSource:
    """Resolved weights: their (validated) config and a local safetensors file.

    ``ref`` is a name that resolves to the same weights again (a registry tag, an absolute folder
    path, or ``hf-hub:ORG/REPO@COMMIT``); ``repo_id`` and ``revision`` the Hub repo and commit.
    """

    config: dict[str, Any] | None
    weights_file: Path | None
    label: str
    expected_sha256: str | None = None  # still to check before use
    verified_sha256: str | None = None  # already checked (by the Hub layer)
    ref: str | None = None
    revision: str | None = None
    repo_id: str | None = None


@dataclass
class LoadReport:
    """What happened to each key when weights were loaded into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, model, weights
    reinitialized: list[str] = field(default_factory=list)  # head replaced for num_classes
    adapted: list[str] = field(default_factory=list)  # stem weights adapted for in_chans
    dropped: list[str] = field(default_factory=list)  # decoder keys a features_only model lacks
    source: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def summary(self, limit: int = 10) -> str:
        """One readable block: a line per kind of difference, then the keys, indented."""

        def block(title: str, items: list[str]) -> list[str]:
            out = [f"  {title} ({len(items)}):"]
            out += [f"    {i}" for i in items[:limit]]
            if len(items) > limit:
                out.append(f"    ... and {len(items) - limit} more")
            return out

        lines: list[str] = []
        if self.missing:
            lines += block("missing in the weights", self.missing)
        if self.unexpected:
            lines += block("unexpected in the weights", self.unexpected)
        if self.reshaped:
            lines += block("shape differs", [f"{k}: model {tuple(m)} vs weights {tuple(w)}"
                                             for k, m, w in self.reshaped])
        if self.reinitialized:
            lines += block("re-initialised head (num_classes)", self.reinitialized)
        if self.adapted:
            lines += block("stem adapted to in_chans", self.adapted)
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} decoder keys (features_only model)")
        return "\n".join(lines) or "  all keys matched"


# ---------------------------------------------------------------------------------------------
# reading


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a weights directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsFormatError(
            f"{path} not found: a rasd_hub weights directory holds {WEIGHTS_NAME}, {CONFIG_NAME} "
            f"and {CARD_NAME}. Write one with rasd_hub.save_pretrained(model, DIR) or "
            "`rasd hub export CHECKPOINT DIR`; convert released RaSE_*.pth files with "
            "`rasd hub convert`."
        ) from None
    except json.JSONDecodeError as err:
        raise WeightsFormatError(f"{path} is not valid JSON ({err}); re-download or re-export it") from None
    check_config(config, str(path), arch_lookup=get_arch)
    return config


def load_weights_file(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a safetensors file into CPU tensors, checking its sha256 first when one is given."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"weights file {path} not found")
    if expected_sha256:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"{path}: sha256 {actual} does not match the expected {expected_sha256}; the file "
                "is corrupted or was replaced. Delete it and download or export it again.",
                filename=str(path), expected=expected_sha256, actual=actual,
            )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFormatError(f"{path} is not a readable safetensors file ({err})") from None


# ---------------------------------------------------------------------------------------------
# adapting and loading


def tensor_aliases(state_dict: Mapping[str, Any]) -> dict[str, str]:
    """``{alias: first name}`` for keys that name the very same tensor as an earlier key.

    nnU-Net's networks register modules twice (the decoder holds the encoder, a conv block lists
    its layers again in ``all_modules``), so one parameter appears under several keys. Our files
    store each tensor once, under its first name; loading into the module fills every alias.
    """
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in state_dict.items():
        if not hasattr(v, "untyped_storage") or v.numel() == 0:
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())
        if ident in first:
            aliases[k] = first[ident]
        else:
            first[ident] = k
    return aliases


def load_state_dict_checked(
    model, state_dict: Mapping[str, Any], *, strict: bool = True, report: LoadReport | None = None,
    source: str = "",
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report every mismatch in one message.

    ``strict=True`` raises :class:`StateDictMismatchError` on any missing, unexpected or reshaped
    key (except the head listed in ``report.reinitialized``); ``strict=False`` loads the keys that
    match, leaves the rest as initialised and warns. Tensors are assigned, not copied, so loading
    never holds two full copies of the weights.
    """
    report = report or LoadReport()
    report.source = source
    own = model.state_dict()
    reinit = set(report.reinitialized)
    matched = {}
    for k, v in state_dict.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            report.reshaped.append((k, tuple(own[k].shape), tuple(v.shape)))
        else:
            target = own[k]
            matched[k] = v if v.dtype == target.dtype else v.to(target.dtype)
    aliases = tensor_aliases(own)
    # an alias is loaded with the tensor it names (the same module), so only its first name counts
    report.missing = [k for k in own if k not in state_dict and k not in reinit
                      and not (k in aliases and aliases[k] in state_dict)]
    for k in [k for k in matched if k in aliases and aliases[k] in matched]:
        del matched[k]  # assigning the first name already replaced the shared tensor
    where = f" from {source}" if source else ""
    if not report.ok:
        cfg = getattr(model, "rasd_config", {})
        args = f" (model args {json.dumps(cfg['model_args'])})" if "model_args" in cfg else ""
        msg = (f"weights{where} do not fit {cfg.get('architecture', type(model).__name__)}{args}:\n"
               f"{report.summary()}")
        if strict:
            raise StateDictMismatchError(
                msg + "\nCheck the architecture and its arguments (num_classes, in_chans, "
                "feature sizes) against the weights' config.json, or pass strict=False to load "
                "only the matching keys.", report=report,
            )
        warnings.warn(msg + "\nstrict=False: the keys above keep their initial values.", stacklevel=3)
    model.load_state_dict(matched, strict=False, assign=True)
    return report


# ---------------------------------------------------------------------------------------------
# writing


def _unwrap(model):
    """The plain model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
        else:
            return model


def save_pretrained(
    model,
    out_dir: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    description: str | None = None,
    state_dict: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in our format: ``model.safetensors``, ``config.json`` and ``README.md``.

    Args:
        model: a model built by :func:`rasd_hub.create_model` (it carries ``rasd_config``).
        out_dir: directory to write. The files are written beside it and then put in its place
            in one step, so a reader sees the previous weights or the new ones, never a mix; an
            existing folder may hold only these three files (anything else is refused).
        provenance: how the weights were made (preset, steps, seed, code version, ...).
        license: licence identifier for the model card (Hub licence ids, e.g. ``apache-2.0``).
        base_model: the Hub id these weights were fine-tuned from, if any.
        description: one paragraph for the model card.
        state_dict: tensors to save instead of ``model.state_dict()`` (e.g. an exported checkpoint).

    Returns the output directory.
    """
    from safetensors.torch import save_file

    from rasd_hub._version import __version__

    model = _unwrap(model)
    cfg = getattr(model, "rasd_config", None)
    if not cfg:
        raise WeightsFormatError(
            "the model has no rasd_config: build it with rasd_hub.create_model(NAME) so its "
            "architecture and arguments can be saved with the weights"
        )
    out = Path(out_dir)
    check_normalization(cfg.get("normalization"), "the model's rasd_config")
    sd = state_dict if state_dict is not None else model.state_dict()
    aliases = tensor_aliases(model.state_dict())
    tensors, seen = {}, set()
    for k, v in sd.items():
        if k in aliases and aliases[k] in sd:
            continue  # the same tensor under a second module path: saved once, under its first name
        v = v.detach().cpu()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if not v.is_contiguous() or (ptr is not None and ptr in seen):
            v = v.contiguous().clone()  # safetensors refuses shared or strided tensors
        if ptr is not None:
            seen.add(ptr)
        tensors[k] = v
    prov = dict(provenance or {})
    prov.setdefault("rasd_hub_version", __version__)
    # the three files are written beside OUT and published together (rasd_hub._io.atomic_dir)
    try:
        with atomic_dir(out, replaceable=(WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)) as staging:
            # one metadata key only: safetensors writes the header's metadata from a Rust HashMap,
            # whose order (hence the file's bytes and sha256) changes from process to process
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
            config = {"format": FORMAT, "format_version": FORMAT_VERSION}
            config.update({k: cfg.get(k) for k in _CONFIG_KEYS})
            if cfg.get("head_type"):
                config["head_type"] = cfg["head_type"]
            config["embedding_dim"] = cfg.get("out_channels")
            # what timm's `hf-hub:` loader reads (timm.models.load_model_config_from_hf): it then
            # calls the registered entry point, which loads through rasd_hub (rasd_hub._timm)
            config["pretrained_cfg"] = timm_pretrained_cfg(model, license)
            config["license"] = license
            if base_model:
                config["base_model"] = base_model
            config["provenance"] = prov
            config["weights"] = {
                "file": WEIGHTS_NAME, "sha256": sha256_file(staging / WEIGHTS_NAME),
                "size": (staging / WEIGHTS_NAME).stat().st_size,
                "num_params": sum(int(t.numel()) for k, t in tensors.items()
                                  if not k.endswith("num_batches_tracked")),
                "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", "") if tensors else None,
            }
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            (staging / CARD_NAME).write_text(model_card(config, description=description),
                                             encoding="utf-8")
    except FileExistsError as err:
        raise WeightsFormatError(f"cannot write weights to {out}: {err.strerror}") from None
    return out


def timm_pretrained_cfg(model, license: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` block of ``config.json`` in timm's field names."""
    pcfg = getattr(model, "pretrained_cfg", None)
    if pcfg is None:
        return {}
    out: dict[str, Any] = {
        "input_size": list(pcfg.input_size), "min_input_size": pcfg.min_input_size,
        "input_divisor": pcfg.input_divisor, "num_classes": pcfg.num_classes,
        "first_conv": list(pcfg.first_conv), "classifier": pcfg.classifier,
        "license": license, "paper": pcfg.paper, "library": "rasd_hub",
    }
    # timm applies (x - mean) / std after scaling into [0, 1]: the identity here, since the
    # network saw [0, 1] images; the measured moments stay in config.json's "normalization"
    out["mean"], out["std"] = [0.0] * pcfg.in_chans, [1.0] * pcfg.in_chans
    out["interpolation"], out["crop_pct"] = "bilinear", 1.0
    return out


#: the card body (Jinja, rendered by huggingface_hub.ModelCard.from_template)
_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

{{ description }}

| | |
| --- | --- |
| architecture | `{{ architecture }}` ({{ dims }}D, {{ params }} parameters) |
| input | {{ in_chans }} channel(s), spatial sizes multiples of {{ divisor }} (at least {{ min_size }}) |
| output | {{ out }} channels{{ out_note }} |
| intensity normalisation | {{ norm }} |
| licence | {{ license }} |

## Intended use

Initialisation for fine-tuning segmentation and other dense-prediction models on medical images
(research). The network was pre-trained with RaSD (randomized synthesis and prototype
disentangling learning) and has never seen a real patient image.

## Training data

**Synthetic only**: random label maps and images generated on the fly; no real or patient data.

{{ provenance }}

## How to fine-tune

```python
import rasd_hub

model = rasd_hub.create_model("{{ load_name }}", pretrained=True, num_classes=NUM_CLASSES)
# in_chans=4 adapts the stem for multi-channel inputs (e.g. MRI sequences);
# head="classifier" pools the encoder into a linear layer for image-level labels
```

From timm (after `import rasd_hub`): `timm.create_model("{{ load_name }}", pretrained=True)`.

or with nnU-Net v2: `rasd nnunet plan -d DATASET --weights {{ load_name }}`, then
`nnUNetv2_train DATASET CONFIG FOLD -p RaSDPlans -tr RaSDTrainer`.

## Limitations

**Not for clinical use.** Not a medical device; not validated for diagnosis or treatment.
Features are learned from synthetic shapes and intensities only; fine-tune and validate on your
own data.
"""


def model_card(
    config: Mapping[str, Any], *, description: str | None = None, load_name: str | None = None
) -> str:
    """The ``README.md`` model card for a weights ``config``: front matter from
    ``huggingface_hub.ModelCardData``, body rendered by ``ModelCard.from_template``."""
    from huggingface_hub import ModelCard, ModelCardData

    arch = config["architecture"]
    dims = config.get("spatial_dims")
    tags = ["rasd", "medical-imaging", "image-segmentation", "synthetic-data", "pytorch",
            "safetensors", "monai", f"{dims}d", arch]
    license = config.get("license", "apache-2.0")
    card_data = ModelCardData(license=license, library_name="rasd-hub", tags=tags,
                              pipeline_tag="image-segmentation", base_model=config.get("base_model"))
    prov = config.get("provenance") or {}
    prov_md = "Provenance:\n\n" + "\n".join(f"- {k}: `{v}`" for k, v in prov.items()) if prov else ""
    norm = config.get("normalization") or {}
    out = config.get("out_channels")
    card = ModelCard.from_template(
        card_data, template_str=_CARD_TEMPLATE,
        title=f"RaSD {arch}",
        description=description or f"`{arch}` pre-trained on purely synthetic data with RaSD.",
        architecture=arch, dims=dims,
        params=f"{config.get('weights', {}).get('num_params', 0):,}",
        in_chans=config.get("in_chans"), divisor=config.get("input_divisor"),
        min_size=config.get("min_input_size"),
        out="features" if config.get("features_only") else out,
        out_note=" (the pre-training embedding)" if out == 32 and not config.get("base_model") else "",
        norm=norm.get("description", norm.get("method", "see config.json")),
        license=license, provenance=prov_md,
        load_name=load_name or config.get("hub_id") or "hf-hub:ORG/REPO",
    )
    return str(card)
