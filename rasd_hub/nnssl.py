"""nnssl's checkpoint format for Residual Encoder U-Nets: export RaSD weights, import nnssl ones.

An nnssl checkpoint is a ``torch.save`` dict with ``network_weights`` (the network's full state
dict, as nnU-Net builds it) and ``nnssl_adaptation_plan``: the architecture
(``architecture_plans``: ``arch_class_name`` ``ResidualEncoderUNet`` with nnU-Net's
``arch_kwargs``), the pre-training plan (its configuration's spacing, patch size and
normalisation), the number of input channels, a recommended downstream patch size and the
state-dict prefixes of encoder, stem and input projection. nnU-Net's own fine-tuning path for
nnssl checkpoints (``nnUNetv2_preprocess_like_nnssl`` + ``PretrainedTrainer``, nnU-Net master)
reads exactly that, so exported RaSD weights need no plugin there. nnssl and that path are 3D only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from rasd_hub._io import atomic_path, sha256_file
from rasd_hub._manipulate import set_normalization
from rasd_hub._pretrained import PAPER
from rasd_hub.errors import WeightsFormatError

__all__ = ["write_nnssl_checkpoint", "read_nnssl_checkpoint", "convert_nnssl", "is_nnssl_checkpoint",
           "adaptation_plan", "nnunet_finetuning_note", "CITATION"]

ARCH_CLASS_NAME = "ResidualEncoderUNet"
_ENCODER, _STEM = "encoder.stages", "encoder.stem"
_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
#: what our ResEnc models fix (rasd_hub.models.resenc); an imported plan must agree
_FIXED = {
    "conv_bias": True,
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
}
#: our normalisation methods as nnU-Net's schemes (per-image min-max into [0, 1]; z-score)
_NNUNET_SCHEME = {"minmax": "RescaleTo01Normalization", "zscore": "ZScoreNormalization"}
_OPS = {"conv_op": "Conv3d", "norm_op": "InstanceNorm3d", "nonlin": "LeakyReLU"}
CITATION = {"type": "pre-training", "name": "RaSD, purely synthetic pre-training (rasd-hub)",
            "apa_citations": [PAPER]}


def nnunet_finetuning_note(model) -> str | None:
    """What a user of nnU-Net's own nnssl fine-tuning should know about these weights' inputs, or
    None when nothing. nnU-Net's ``nnUNetv2_preprocess_like_nnssl`` (nnU-Net master, checked at
    commit 0e49508) z-scores every channel whatever the plan's ``normalization_schemes`` say."""
    norm = model.rasd_config.get("normalization") or {}
    if norm.get("method", "minmax") == "zscore":
        return None
    moments = f" (mean {norm['mean']:g}, std {norm['std']:g})" if "mean" in norm and "std" in norm else ""
    return (f"note: these weights were pre-trained on min-max [0, 1] inputs{moments}, which the "
            "checkpoint's plan states, but nnU-Net's nnUNetv2_preprocess_like_nnssl z-scores every "
            "channel regardless, so that path fine-tunes on other intensities than pre-training "
            "saw. `rasd nnunet plan --weights W` (RaSD plans) maps nnU-Net's intensities onto the "
            "weights' moments instead.")


def adaptation_plan(model, *, patch_size, spacing=(1.0, 1.0, 1.0)) -> dict[str, Any]:
    """The ``nnssl_adaptation_plan`` of a 3D rasd_hub ResEnc model pre-trained on ``patch_size``
    synthetic volumes (treated as ``spacing`` mm voxels)."""
    kwargs = model.dynamic_network_kwargs()
    patch = [int(p) for p in patch_size]
    norm = (model.rasd_config.get("normalization") or {}).get("method", "minmax")
    if norm not in _NNUNET_SCHEME:
        raise WeightsFormatError(f"normalization {norm!r} has no nnU-Net scheme; expected one of "
                                 f"{sorted(_NNUNET_SCHEME)}")
    configuration = {
        "data_identifier": "rasdSynthetic",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso",
        # the intensities the weights were trained on, as nnU-Net's own scheme that produces them
        "normalization_schemes": [_NNUNET_SCHEME[norm]],
        "use_mask_for_norm": False,
        "spacing": [float(s) for s in spacing],
        "patch_size": patch,
    }
    return {
        "architecture_plans": {
            "arch_class_name": ARCH_CLASS_NAME,
            "arch_kwargs": kwargs,
            "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"],
        },
        "pretrain_plan": {
            "dataset_name": "RaSD_synthetic",
            "plans_name": "rasdPlans",
            "original_median_spacing_after_transp": [float(s) for s in spacing],
            "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "rasd pretrain",
            "configurations": {"onemmiso": configuration},
        },
        "pretrain_num_input_channels": int(model.rasd_config["in_chans"]),
        "recommended_downstream_patchsize": patch,
        "key_to_encoder": _ENCODER,
        "key_to_stem": _STEM,
        "keys_to_in_proj": list(_IN_PROJ),
        "key_to_lpe": None,
    }


def write_nnssl_checkpoint(model, path: str | os.PathLike, *, provenance: Mapping | None = None,
                           patch_size=None, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write ``model`` (a 3D rasd_hub ResEnc model) as an nnssl checkpoint at ``path``.

    ``patch_size`` defaults to the pre-training ``size`` in ``provenance`` (how the weights were
    made, as config.json records it), else the architecture's typical input. The file is written
    beside ``path`` and renamed into place.
    """
    import torch

    cfg = model.rasd_config
    if not hasattr(model, "dynamic_network_kwargs") or cfg.get("features_only"):
        raise WeightsFormatError(
            f"{cfg['architecture']} is not a full Residual Encoder U-Net: nnssl checkpoints hold "
            "nnU-Net's ResidualEncoderUNet (rasd3d_resencl, rasd3d_resenc_small or one built "
            "with their arguments).")
    if cfg["spatial_dims"] != 3:
        raise WeightsFormatError(
            f"{cfg['architecture']} is 2D; nnssl and nnU-Net's fine-tuning from nnssl "
            "checkpoints are 3D only. Use the rasd_hub weights folder (or RaSD plans in nnU-Net) "
            "for 2D models.")
    if patch_size is None:
        size = (provenance or {}).get("size")
        if isinstance(size, (list, tuple)):
            patch_size = [int(s) for s in size]
        else:
            patch_size = [int(size)] * 3 if size else _typical_size(cfg)
    plan = adaptation_plan(model, patch_size=patch_size, spacing=spacing)
    # the full state dict, aliases included, as nnU-Net's network has it (strict loads there)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "nnssl_adaptation_plan": plan,
        "rasd": {"architecture": cfg["architecture"], "model_args": cfg["model_args"],
                 "normalization": cfg.get("normalization"),
                 "pretrained": cfg.get("pretrained"), "provenance": dict(provenance or {})},
        # nnU-Net's PretrainedTrainer prints entries of this shape (type, name, apa_citations)
        "citations": [CITATION],
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _typical_size(cfg: Mapping[str, Any]) -> list[int]:
    from rasd_hub._registry import get_arch

    return list(get_arch(cfg["architecture"]).input_size[1:])


def _model_args(plan: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our ResEnc model arguments for an nnssl adaptation plan, or an error naming the field."""
    arch = plan.get("architecture_plans") or {}
    if arch.get("arch_class_name") != ARCH_CLASS_NAME or not arch.get("arch_kwargs"):
        raise WeightsFormatError(
            f"{source}: architecture_plans.arch_class_name is {arch.get('arch_class_name')!r}; "
            f"only {ARCH_CLASS_NAME!r} with arch_kwargs (nnU-Net's Residual Encoder U-Net) "
            "converts into rasd_hub (presets such as 'ResEncL' or Primus do not).")
    kw = arch["arch_kwargs"]

    def bad(field: str, why: str):
        return WeightsFormatError(f"{source}: architecture_plans.arch_kwargs.{field} {why}; "
                                  "rasd_hub's ResEnc models use nnU-Net's 3D operators only")

    for field, name in _OPS.items():
        if str(kw.get(field, "")).rsplit(".", 1)[-1] != name:
            raise bad(field, f"is {kw.get(field)!r}, expected torch's {name}")
    for field, value in _FIXED.items():
        if kw.get(field) != value:
            raise bad(field, f"is {kw.get(field)!r}, expected {value!r}")

    def isotropic(field: str) -> list[int]:
        out = []
        for v in kw.get(field) or []:
            v = [v] * 3 if isinstance(v, int) else list(v)
            if len(set(v)) != 1:
                raise bad(field, f"has the anisotropic entry {v}")
            out.append(int(v[0]))
        return out

    blocks = kw.get("n_blocks_per_stage")
    decoder = kw.get("n_conv_per_stage_decoder")
    n = int(kw.get("n_stages", 0))
    return dict(
        spatial_dims=3,
        in_channels=int(plan.get("pretrain_num_input_channels", 1)),
        features_per_stage=[int(f) for f in kw["features_per_stage"]],
        strides=isotropic("strides"),
        kernel_sizes=isotropic("kernel_sizes"),
        n_blocks_per_stage=[int(blocks)] * n if isinstance(blocks, int) else list(blocks),
        n_conv_per_stage_decoder=[int(decoder)] * (n - 1) if isinstance(decoder, int) else list(decoder),
    )


def _normalization(plan: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The intensities the weights were pre-trained on, from the pre-training configuration's
    nnU-Net normalisation scheme (never a default: fine-tuning applies it)."""
    configurations = ((plan.get("pretrain_plan") or {}).get("configurations") or {})
    schemes = {s for c in configurations.values() for s in (c.get("normalization_schemes") or [])}
    methods = {m for m, scheme in _NNUNET_SCHEME.items() if scheme in schemes}
    if len(schemes) != 1 or len(methods) != 1:
        raise WeightsFormatError(
            f"{source}: the pre-training plan's normalization_schemes are {sorted(schemes)}; "
            f"rasd_hub converts checkpoints pre-trained with exactly one of "
            f"{sorted(_NNUNET_SCHEME.values())}")
    method = methods.pop()
    if method == "minmax":
        return {"method": "minmax", "range": [0.0, 1.0],
                "description": "per image (x - min) / (max - min) into [0, 1] (nnU-Net's "
                               "RescaleTo01Normalization), as in pre-training"}
    return {"method": "zscore", "description": "per image (x - mean) / std (nnU-Net's "
                                               "ZScoreNormalization), as in pre-training"}


def read_nnssl_checkpoint(path: str | os.PathLike):
    """An nnssl checkpoint of a Residual Encoder U-Net as a rasd_hub model (loaded strictly).

    Read with ``torch.load(weights_only=True)``; the model is ``rasd3d_resencl`` with the plan's
    stage layout, its head as many channels as the checkpoint's segmentation layers. Returns the
    model and a provenance dict (source file, its sha256, the adaptation plan's patch size).
    """
    from rasd_hub._builder import create_model
    from rasd_hub.convert import read_checkpoint
    from rasd_hub.weights import load_state_dict_checked

    raw = read_checkpoint(path)
    if not isinstance(raw, Mapping) or "network_weights" not in raw or "nnssl_adaptation_plan" not in raw:
        found = sorted(map(str, raw))[:12] if isinstance(raw, Mapping) else type(raw).__name__
        raise WeightsFormatError(
            f"{path} is not an nnssl checkpoint: it needs 'network_weights' and "
            f"'nnssl_adaptation_plan' (found {found}).")
    plan = raw["nnssl_adaptation_plan"]
    args = _model_args(plan, str(path))
    sd = raw["network_weights"]
    seg = sorted(k for k in sd if k.startswith("decoder.seg_layers.") and k.endswith(".weight"))
    if not seg:
        raise WeightsFormatError(f"{path}: network_weights has no decoder.seg_layers.*; is it a "
                                 "Residual Encoder U-Net's full state dict?")
    args["out_channels"] = int(sd[seg[-1]].shape[0])
    model = create_model("rasd3d_resencl", **args)
    load_state_dict_checked(model, sd, strict=True, source=str(path))
    set_normalization(model, _normalization(plan, str(path)))
    provenance = {
        "source": "converted nnssl checkpoint",
        "source_file": Path(path).name,
        "source_sha256": sha256_file(path),
        "pretrain_patch_size": list(plan.get("recommended_downstream_patchsize") or []),
        "rasd": raw.get("rasd"),
    }
    return model, provenance


def is_nnssl_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an nnssl checkpoint (read safely, as every checkpoint here)."""
    from rasd_hub.convert import read_checkpoint

    raw = read_checkpoint(path)
    return isinstance(raw, Mapping) and "nnssl_adaptation_plan" in raw


def convert_nnssl(path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  license: str = "other") -> Path:
    """Convert an nnssl checkpoint of a Residual Encoder U-Net into a rasd_hub weights folder."""
    from rasd_hub.weights import save_pretrained

    model, provenance = read_nnssl_checkpoint(path)
    rasd = provenance.pop("rasd", None) or {}
    if rasd.get("normalization"):  # exported by rasd_hub: keeps the measured moments too
        set_normalization(model, rasd["normalization"])
    return save_pretrained(model, out_dir, provenance=provenance, license=license,
                           description=f"Residual Encoder U-Net converted from the nnssl checkpoint "
                                       f"`{Path(path).name}`.")
