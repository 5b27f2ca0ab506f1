"""RaSD plans: nnU-Net's own plans for a dataset, with the pre-trained network in them.

nnU-Net changes a network through planning and a plans identifier (``-pl nnUNetPlannerResEncM``
writes ``nnUNetResEncUNetMPlans``, trained with ``-p nnUNetResEncUNetMPlans``). nnU-Net 2.8 finds
planners only inside its own package, so ``rasd nnunet plan`` does the same from outside: it
starts from the dataset's existing plans (``nnUNetPlans`` by default) and writes a new plans file
(``RaSDPlans`` by default; the source is never touched) in which every chosen configuration has

* ``architecture``: the pre-trained network (:class:`nnunet_plugin.network.RaSDNetwork`, built by
  nnU-Net's own ``get_network_from_plans``) with the input mapping for the weights;
* ``patch_size``: nnU-Net's patch rounded to the network's input divisor;
* ``batch_size``: re-estimated for this network's memory (:func:`estimate_batch_size`);
* ``data_identifier``: the source configuration's, because spacing, resampling and normalisation
  are unchanged: the preprocessed data are reused, not written twice;
* ``rasd``: what changed and why (nnU-Net's patch and batch, the batch rule's numbers, the
  intensity mapping per channel).

The plans' top-level ``rasd`` block records the weights' identity (source, architecture,
sha256, Hub revision): ``RaSDTrainer`` loads exactly those weights and refuses others.
"""

from __future__ import annotations

import copy
import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nnunet_plugin.errors import PatchTooSmallError, PlansError, WeightsDimensionError

__all__ = ["DEFAULT_PLANS_NAME", "PlanResult", "plan_dataset", "plan_configuration", "round_patch_size",
           "estimate_batch_size", "activation_bytes", "nnunet_dataset_voxels", "planned_weights", "PLANS_FORMAT"]

DEFAULT_PLANS_NAME = "RaSDPlans"
PLANS_FORMAT = 1
#: training state per parameter in bytes, fp32: weights + gradients + optimiser buffers
SGD_MOMENTUM_BYTES_PER_PARAM = 12  # nnU-Net's SGD with momentum
ADAMW_BYTES_PER_PARAM = 16  # RaSDTrainer's AdamW (two moments)
MIN_BATCH = 2  # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net's cap: one batch sees at most 5 % of the dataset's voxels


def round_patch_size(patch_size, divisor: int, min_size: int, configuration: str = "") -> list[int]:
    """Each patch dimension rounded to the nearest multiple of ``divisor`` (at least ``min_size``).

    A planned dimension below ``min_size`` is an error rather than silently inflated: nnU-Net plans
    patches no larger than the images, so such a patch means the images (or their slice count) are
    too small for this architecture, and most of an inflated patch would be padding.
    """
    too_small = [int(p) for p in patch_size if int(p) < min_size]
    if too_small:
        raise PatchTooSmallError(
            f"nnU-Net planned patch size {list(patch_size)} for configuration {configuration!r}, but "
            f"this architecture needs every dimension to be at least {min_size} (a multiple of "
            f"{divisor}). Use a 2D configuration for thin or anisotropic images, a smaller "
            "architecture (e.g. rasd2d_small / rasd3d_small weights), or resample the images to a "
            "finer spacing (more voxels per image).")
    # ties round up (40 -> 48 for a divisor of 16): more context rather than less
    return [max(min_size, divisor * int(int(p) / divisor + 0.5)) for p in patch_size]


def activation_bytes(network, input_shape: Sequence[int]) -> int:
    """Bytes of the activations autograd keeps for the backward pass of one training forward pass.

    This is the memory that grows with batch and patch size. Measured exactly and for free on the
    ``meta`` device (shapes only, nothing computed or allocated): ``network`` is moved there, so
    pass one built for the purpose. Tensors that share storage are counted once; the network's own
    parameters and buffers (also saved for backward) are not activations and are left out.
    """
    import torch
    from torch.autograd.graph import saved_tensors_hooks

    network = network.to("meta").train()
    own = {t.untyped_storage()._cdata for t in [*network.parameters(), *network.buffers()]}
    saved: dict[tuple, int] = {}

    def pack(t):
        storage = t.untyped_storage()._cdata
        if storage not in own:
            saved[(storage, t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        network(torch.zeros(tuple(input_shape), device="meta"))
    return int(sum(saved.values()))


def _num_params(network) -> int:
    return sum(p.numel() for p in network.parameters())


def estimate_batch_size(*, nnunet_network, nnunet_patch: Sequence[int], nnunet_batch: int,
                        network, patch: Sequence[int], input_channels: int,
                        dataset_voxels: float) -> tuple[int, dict[str, Any]]:
    """The batch that gives ``network`` the memory nnU-Net's own plan gives its network.

    nnU-Net sizes its batch from a feature-map count that holds for its CNNs, not for other
    architectures (a Swin UNETR keeps attention maps and several times the activations per voxel).
    The rule here measures both networks the same way instead:

        memory(batch) = batch * activation_bytes_per_sample + training state per parameter
        batch = floor((memory of nnU-Net's plan - our training state) / our activation bytes)

    with activation bytes from :func:`activation_bytes` at each network's patch, 12 bytes per
    parameter for nnU-Net's SGD and 16 for AdamW, then nnU-Net's own bounds: at most 5 % of the
    dataset's voxels per batch, at least 2. Returns the batch and every number of the rule.
    """
    a_nn = activation_bytes(nnunet_network, (1, input_channels, *nnunet_patch))
    a_ours = activation_bytes(network, (1, input_channels, *patch))
    p_nn, p_ours = _num_params(nnunet_network), _num_params(network)
    budget = nnunet_batch * a_nn + SGD_MOMENTUM_BYTES_PER_PARAM * p_nn
    fit = math.floor((budget - ADAMW_BYTES_PER_PARAM * p_ours) / a_ours)
    cap = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(patch))
    batch = max(MIN_BATCH, min(fit, cap))
    record = {
        "rule": "same training memory as nnU-Net's plan: batch = floor((B_nnunet * A_nnunet + "
                "12 * P_nnunet - 16 * P) / A), then at most 5 % of the dataset's voxels, at least 2",
        "nnunet_batch": int(nnunet_batch), "nnunet_activation_bytes_per_sample": a_nn,
        "nnunet_parameters": p_nn, "activation_bytes_per_sample": a_ours, "parameters": p_ours,
        "memory_budget_bytes": int(budget), "fits_memory": int(fit), "dataset_cap": int(cap),
        "batch_size": int(batch),
    }
    if fit < MIN_BATCH:
        record["warning"] = (f"even batch {MIN_BATCH} needs about "
                             f"{(MIN_BATCH * a_ours + ADAMW_BYTES_PER_PARAM * p_ours) / budget:.1f}x "
                             "the memory of nnU-Net's plan; use a smaller patch or architecture if "
                             "training runs out of GPU memory")
    return batch, record


@dataclass
class PlanResult:
    """What ``plan_dataset`` wrote."""

    plans_file: Path
    plans_name: str
    weights: dict[str, Any]
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> summary
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    needs_preprocessing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.plans_file}", f"  weights: {self.weights['source']} "
                 f"({self.weights['architecture']}, sha256 {self.weights['sha256']})"]
        for name, s in self.configurations.items():
            lines.append(f"  {name}: patch {s['nnunet_patch_size']} -> {s['patch_size']}, batch "
                         f"{s['nnunet_batch_size']} -> {s['batch_size']}, data {s['data_identifier']}")
            lines += [f"    channel {c}: {m}" for c, m in enumerate(s["input_mapping"])]
            if "warning" in s["batch_size_rule"]:
                lines.append(f"    WARNING: {s['batch_size_rule']['warning']}")
        for name, why in self.skipped.items():
            lines.append(f"  {name}: skipped ({why})")
        return "\n".join(lines)


def planned_weights(plans: dict) -> dict[str, Any] | None:
    """The weights identity RaSD plans record, or None for other plans."""
    block = plans.get("rasd") or {}
    return block.get("pretrained")


def _dataset_folder(dataset) -> tuple[str, Path]:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed:
        raise PlansError("nnUNet_preprocessed is not set: export nnUNet_raw, nnUNet_preprocessed "
                         "and nnUNet_results as for any nnU-Net command")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as err:
        raise PlansError(f"dataset {dataset!r}: {err}") from None
    return name, Path(nnUNet_preprocessed) / name


def nnunet_dataset_voxels(plans: dict, dataset_json: dict) -> float:
    """nnU-Net's estimate of the dataset's voxel count (its 5 % batch cap): the median 3D shape at
    the full-resolution spacing times the number of training cases, for 2D and 3D configurations
    alike (a 2D dataset's median shape has one slice)."""
    fullres = plans["configurations"].get("3d_fullres")
    shape = fullres["median_image_size_in_voxels"] if fullres else plans["original_median_shape_after_transp"]
    return float(math.prod(shape)) * int(dataset_json["numTraining"])


def plan_configuration(manager, dataset_json: dict, name: str, rasd_config: dict,
                       source: str = "the weights") -> tuple[dict, dict[str, Any]]:
    """One configuration of the source plans with the network ``rasd_config`` describes:
    ``(configuration for the RaSD plans, summary of what changed)``. Raises when the network
    cannot train this configuration (cascade stage, other dimensionality, patch too small)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_plugin.network import RaSDNetwork, architecture_entry
    from nnunet_plugin.normalization import plan_input_mapping

    dims = int(rasd_config["spatial_dims"])
    cfg = copy.deepcopy(manager.get_configuration(name).configuration)
    cfg.pop("inherits_from", None)
    if cfg.get("previous_stage"):
        raise PlansError(f"{name} is a cascade stage; RaSD plans support single-stage "
                         "configurations (2d, 3d_fullres, 3d_lowres)")
    if len(cfg["patch_size"]) != dims:
        raise WeightsDimensionError(
            f"{source} is a {dims}D network ({rasd_config['architecture']}) but configuration "
            f"{name!r} is {len(cfg['patch_size'])}D; plan {'a 2d' if dims == 2 else 'a 3d_fullres'} "
            f"configuration or use {len(cfg['patch_size'])}D weights")
    patch = round_patch_size(cfg["patch_size"], int(rasd_config["input_divisor"]),
                             int(rasd_config["min_input_size"]), name)
    mappings = plan_input_mapping(list(cfg["normalization_schemes"]), rasd_config["normalization"])
    architecture = architecture_entry(rasd_config, [m.scale for m in mappings],
                                      [m.shift for m in mappings])
    num_classes = manager.get_label_manager(dataset_json).num_segmentation_heads
    in_channels = determine_num_input_channels(manager, manager.get_configuration(name), dataset_json)
    source_arch = cfg["architecture"]
    nnunet_net = get_network_from_plans(
        source_arch["network_class_name"], source_arch["arch_kwargs"],
        source_arch["_kw_requires_import"], in_channels, num_classes, allow_init=False,
        deep_supervision=True)
    ours = RaSDNetwork(in_channels, num_classes, **architecture["arch_kwargs"])
    batch, rule = estimate_batch_size(
        nnunet_network=nnunet_net, nnunet_patch=cfg["patch_size"], nnunet_batch=cfg["batch_size"],
        network=ours, patch=patch, input_channels=in_channels,
        dataset_voxels=nnunet_dataset_voxels(manager.plans, dataset_json))
    summary = {"nnunet_patch_size": list(cfg["patch_size"]), "patch_size": patch,
               "nnunet_batch_size": int(cfg["batch_size"]), "batch_size": batch,
               "batch_size_rule": rule, "input_mapping": [m.explanation for m in mappings],
               "data_identifier": cfg["data_identifier"]}
    cfg.update(patch_size=patch, batch_size=batch, architecture=architecture,
               rasd={k: v for k, v in summary.items()
                     if k not in ("patch_size", "batch_size", "data_identifier")})
    return cfg, summary


def plan_dataset(dataset: int | str, weights: str, configurations: Sequence[str] | None = None,
                 plans_name: str = DEFAULT_PLANS_NAME, source_plans: str = "nnUNetPlans") -> PlanResult:
    """Write ``PLANS_NAME.json`` next to ``SOURCE_PLANS.json`` for ``dataset`` and ``weights``.

    ``configurations`` default to every configuration of the source plans whose dimensionality
    matches the weights (cascades excluded); a configuration asked for explicitly that cannot take
    the network is an error, one chosen by default is skipped with the reason.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_plugin.pretrained import load_weights
    from rasd_hub._io import write_json_atomic

    if plans_name == source_plans:
        raise PlansError(f"--plans-name {plans_name!r} would overwrite the source plans; choose "
                         "another name (default RaSDPlans)")
    dataset_name, folder = _dataset_folder(dataset)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise PlansError(
            f"{source_file} not found: plan the dataset with nnU-Net first "
            f"(`nnUNetv2_plan_and_preprocess -d {dataset} -c 2d 3d_fullres`), then run "
            "`rasd nnunet plan` again.")
    plans = load_json(str(source_file))
    dataset_json = load_json(str(folder / "dataset.json"))
    manager = PlansManager(plans)
    pretrained = load_weights(weights, len(dataset_json["channel_names"]),
                              manager.get_label_manager(dataset_json).num_segmentation_heads)

    explicit = configurations is not None
    names = list(configurations) if explicit else list(plans["configurations"])
    unknown = [c for c in names if c not in plans["configurations"]]
    if unknown:
        raise PlansError(f"{source_file.name} has no configuration {', '.join(map(repr, unknown))}; "
                         f"it has {', '.join(plans['configurations'])}")

    result = PlanResult(folder / f"{plans_name}.json", plans_name, pretrained.identity)
    out_configs: dict[str, Any] = {}
    for name in names:
        try:
            cfg, summary = plan_configuration(manager, dataset_json, name, pretrained.config, repr(weights))
        except (PlansError, WeightsDimensionError, PatchTooSmallError) as err:
            if explicit:
                raise
            result.skipped[name] = str(err).split(";")[0]
            continue
        out_configs[name] = cfg
        result.configurations[name] = summary
        if not (folder / cfg["data_identifier"]).is_dir():
            result.needs_preprocessing.append(name)
    if not out_configs:
        raise PlansError(f"no configuration of {source_file.name} fits {weights!r}: "
                         + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()))

    import rasd_hub

    plans = copy.deepcopy(plans)
    plans["plans_name"] = plans_name
    plans["configurations"] = out_configs
    plans["rasd"] = {
        "format_version": PLANS_FORMAT,
        "planned_from": source_plans,
        "pretrained": pretrained.identity,
        "normalization": pretrained.config["normalization"],
        "rasd_hub_version": rasd_hub.__version__,
        "planned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(result.plans_file, plans)
    return result
