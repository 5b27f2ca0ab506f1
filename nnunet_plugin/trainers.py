"""nnU-Net v2 trainers that fine-tune rasd_hub networks: ``nnUNetv2_train D CFG FOLD -tr RaSDTrainer``.

Each class is a small subclass that changes one thing, like nnU-Net's own trainer variants:

====================================  =======================================================
trainer                               what it changes
====================================  =======================================================
``RaSDTrainer``                       pre-trained RaSD network (2D configs: ``rasd2d``,
                                      3D configs: ``rasd3d_swinb``), AdamW + warm-up/poly
``RaSDTrainerFromScratch``            the same network and schedule, randomly initialised
``RaSDTrainerSmall``                  the CPU-sized ``rasd2d_small`` / ``rasd3d_small``
``RaSDTrainerSmallFromScratch``       ... randomly initialised
``RaSDTrainerSmall_20epochs_cpu``     20 short epochs (CPU checks; see its docstring)
``..._2epochs_cpu`` / FromScratch     2 tiny epochs (smoke tests)
====================================  =======================================================

``RASD_WEIGHTS`` (a registry name such as ``rasd2d_small.mytag``, ``hf-hub:ORG/REPO[@REV]`` or a
local folder written by ``rasd_hub.save_pretrained``) replaces the default weights; the network
then follows the weights' own config. What happens before training, in ``__init__``:

1. the architecture is chosen (weights' config, or the saved plans when resuming with ``--c``),
   and 2D weights for a 3D configuration (or the reverse) are refused;
2. the patch size is rounded to the architecture's ``input_divisor`` (a patch smaller than its
   ``min_input_size`` is refused) and the change is logged;
3. nnU-Net's per-channel normalisation is compared with the weights' and the mapping that puts
   them on the same footing is logged (:mod:`nnunet_plugin.normalization`);
4. the recipe is written into the plans' ``architecture`` entry, so ``nnUNetv2_predict`` rebuilds
   the network from the plans alone (:func:`nnunet_plugin.network.build_from_recipe`).

The weights are copied into the network in :meth:`RaSDTrainer.initialize`, except when nnU-Net
restores one of its own checkpoints (``--c``, ``--val``), which must win.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch._dynamo import OptimizedModule

from nnunet_plugin import pretrained
from nnunet_plugin.errors import PatchTooSmallError, WeightsDimensionError
from nnunet_plugin.network import build_from_recipe, is_rasd_recipe, network_recipe
from nnunet_plugin.normalization import plan_input_mapping
from nnunet_plugin.schedule import WarmupPolyLRScheduler, warmup_epochs_for

__all__ = [
    "RaSDTrainer", "RaSDTrainerFromScratch", "RaSDTrainerSmall", "RaSDTrainerSmallFromScratch",
    "RaSDTrainerSmall_20epochs_cpu", "RaSDTrainerSmallFromScratch_20epochs_cpu",
    "RaSDTrainerSmall_2epochs_cpu", "RaSDTrainerSmallFromScratch_2epochs_cpu",
    "round_patch_size",
]


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
            "architecture (RaSDTrainerSmall, whose networks need less), or resample the images to a "
            "finer spacing (more voxels per image).")
    # ties round up (40 -> 48 for a divisor of 16): more context rather than less
    return [max(min_size, divisor * int(int(p) / divisor + 0.5)) for p in patch_size]


class RaSDTrainer(nnUNetTrainer):
    """Fine-tune a pre-trained RaSD network.

    Optimiser: AdamW, peak lr 3e-4, weight decay 1e-5, the RaSD paper's adaptation setting; 3e-4
    with AdamW is also what Primus (nnU-Net's transformer baseline) uses, and nnU-Net's SGD at 1e-2
    is known to train transformers (Swin UNETR) poorly. Schedule: linear warm-up over 5 % of the
    epochs (50 of 1000, as nnssl fine-tunes), so the large early gradients coming back from the new,
    random head do not wreck the pre-trained features; then nnU-Net's poly decay.
    """

    #: which rasd_hub architecture (and default weights) each spatial dimensionality uses
    default_architectures = {2: "rasd2d", 3: "rasd3d_swinb"}
    load_pretrained_weights = True
    peak_lr = 3e-4
    fine_tune_weight_decay = 1e-5
    warmup_fraction = 0.05

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's __init__ pops this; without a checkpoint to restore it starts fresh anyway.
        resuming = bool(plans.get("continue_training", False))
        plans, notes = self._adapt_plans(plans, configuration, dataset_json, resuming)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.peak_lr
        self.weight_decay = self.fine_tune_weight_decay
        # rasd_hub networks have one output; nnU-Net's deep-supervision loss would expect several.
        self.enable_deep_supervision = False
        self._restoring_nnunet_checkpoint = False
        for line in notes:
            self.print_to_log_file(line)

    # ------------------------------------------------------------------ choosing the network

    def _weights_source(self, spatial_dims: int) -> tuple[str, bool]:
        """(what to load, whether the user chose it through RASD_WEIGHTS)."""
        chosen = os.environ.get(pretrained.ENV_VAR, "").strip()
        if chosen:
            return chosen, True
        return self.default_architectures[spatial_dims], False

    def _adapt_plans(self, plans: dict, configuration: str, dataset_json: dict, resuming: bool):
        """Return (plans with the RaSD recipe for ``configuration``, lines for the training log)."""
        self._rasd_weights = None
        plans = copy.deepcopy(plans)
        manager = PlansManager({k: v for k, v in plans.items() if k != "continue_training"})
        config = copy.deepcopy(manager.get_configuration(configuration).configuration)
        config.pop("inherits_from", None)
        spatial_dims = len(config["patch_size"])
        notes = []

        saved = self._saved_recipe(plans, configuration) if resuming else None
        if saved is not None:
            # The checkpoint was trained with this recipe; RASD_WEIGHTS must not change it now.
            config["architecture"] = saved
            plans["configurations"][configuration] = config
            notes.append("RaSD: resuming (--c): network recipe taken from the run's own plans.json; "
                         "RaSD weights are not reloaded over nnU-Net's checkpoint"
                         + (f" (RASD_WEIGHTS={os.environ[pretrained.ENV_VAR]} is ignored)"
                            if os.environ.get(pretrained.ENV_VAR) else ""))
            return plans, notes

        source, from_env = self._weights_source(spatial_dims)
        total_inputs = determine_num_input_channels(manager, manager.get_configuration(configuration),
                                                    dataset_json)
        num_classes = manager.get_label_manager(dataset_json).num_segmentation_heads
        if self.load_pretrained_weights:
            # Loaded (checksums verified, stem and head adapted) now, so that missing or corrupted
            # weights stop the run before preprocessing data is even touched.
            weights = pretrained.load_for_dataset(source, total_inputs, num_classes)
            rasd_config = weights.config
            weights_record = weights.record()
            notes.append(f"RaSD: pre-trained weights {weights.describe()}"
                         + (" (from RASD_WEIGHTS)" if from_env else " (default for this trainer)"))
        else:
            # Same architecture as the pre-trained twin would get, but nothing loaded.
            rasd_config = pretrained.architecture_config(source)
            weights_record = None
            notes.append(f"RaSD: training from scratch: architecture of {source!r}, random init")

        if int(rasd_config["spatial_dims"]) != spatial_dims:
            raise WeightsDimensionError(
                f"{source!r} is a {rasd_config['spatial_dims']}D network ({rasd_config['architecture']}) "
                f"but configuration {configuration!r} is {spatial_dims}D. Use "
                f"{'a 2d' if spatial_dims == 3 else 'a 3d_fullres'} configuration, or point "
                f"RASD_WEIGHTS at {spatial_dims}D weights (e.g. "
                f"{self.default_architectures[spatial_dims]!r}).")

        divisor = int(rasd_config["input_divisor"])
        min_size = int(rasd_config.get("min_input_size", divisor))
        old_patch = [int(p) for p in config["patch_size"]]
        new_patch = round_patch_size(old_patch, divisor, min_size, configuration)
        config["patch_size"] = new_patch
        if new_patch != old_patch:
            notes.append(f"RaSD: patch size {old_patch} -> {new_patch}: "
                         f"{rasd_config['architecture']} needs multiples of {divisor}")
        else:
            notes.append(f"RaSD: patch size {new_patch} already fits {rasd_config['architecture']} "
                         f"(multiples of {divisor})")

        mappings = plan_input_mapping(list(config["normalization_schemes"]),
                                      rasd_config.get("normalization"))
        for c, m in enumerate(mappings):
            notes.append(f"RaSD: intensity channel {c}: {m.explanation}")
        scale = [m.scale for m in mappings]
        shift = [m.shift for m in mappings]
        # Cascade stages add one-hot segmentations of the previous stage as extra inputs; they are
        # not intensities and pass through unchanged.
        scale += [1.0] * (total_inputs - len(scale))
        shift += [0.0] * (total_inputs - len(shift))
        if total_inputs != 1:
            notes.append(f"RaSD: {total_inputs} input channels: the single-channel stem is adapted "
                         "by rasd_hub (create_model in_chans)")

        config["architecture"] = network_recipe(rasd_config, scale, shift, weights_record)
        plans["configurations"][configuration] = config
        if self.load_pretrained_weights:
            self._rasd_weights = weights
        return plans, notes

    def _saved_recipe(self, plans: dict, configuration: str):
        """The recipe in this run's results folder, or None (no earlier run to resume)."""
        from nnunetv2.paths import nnUNet_results

        if not nnUNet_results.is_set():
            return None
        name = f"{self.__class__.__name__}__{plans['plans_name']}__{configuration}"
        path = os.path.join(str(nnUNet_results), plans["dataset_name"], name, "plans.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            saved = json.load(f)
        architecture = saved.get("configurations", {}).get(configuration, {}).get("architecture")
        return architecture if is_rasd_recipe(architecture) else None

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        # Static and weights-free: nnUNetv2_predict calls it with only the saved plans.
        return build_from_recipe(configuration_manager.network_arch_init_kwargs,
                                 num_input_channels, num_output_channels)

    # ------------------------------------------------------------------ weights

    def _bare_network(self):
        """The RaSDNetwork inside DDP / torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def initialize(self):
        super().initialize()
        if self._rasd_weights is not None and not self._restoring_nnunet_checkpoint:
            # In place: the optimizer built in super().initialize() keeps its parameter references.
            report = pretrained.copy_into(self._bare_network().net, self._rasd_weights)
            self.print_to_log_file(f"RaSD: loaded {self._rasd_weights.describe()}\n{report}")
            self._rasd_weights.state_dict = {}  # the network holds them now

    def load_checkpoint(self, filename_or_checkpoint):
        # nnU-Net calls this for --c, --val and val_with_best: its checkpoint holds the trained
        # weights, so the pre-trained ones must neither be loaded first nor be required.
        self._restoring_nnunet_checkpoint = True
        super().load_checkpoint(filename_or_checkpoint)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                      weight_decay=self.weight_decay)
        warmup = warmup_epochs_for(self.num_epochs, self.warmup_fraction)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, warmup)
        self.print_to_log_file(f"RaSD: AdamW lr {self.initial_lr:g} weight decay {self.weight_decay:g}, "
                               f"linear warm-up {warmup} epoch(s) then poly decay to epoch {self.num_epochs}")
        return optimizer, scheduler

    def set_deep_supervision_enabled(self, enabled: bool):
        # rasd_hub networks have a single output; nothing to switch (the base reaches for
        # .decoder.deep_supervision, which they do not have).
        pass


class RaSDTrainerFromScratch(RaSDTrainer):
    """The honest baseline: :class:`RaSDTrainer`'s network and schedule, random initialisation."""

    load_pretrained_weights = False


class RaSDTrainerSmall(RaSDTrainer):
    """CPU-sized networks: ``rasd2d_small`` (2D) and ``rasd3d_small`` (3D)."""

    default_architectures = {2: "rasd2d_small", 3: "rasd3d_small"}


class RaSDTrainerSmallFromScratch(RaSDTrainerSmall):
    load_pretrained_weights = False


class _ShortCPURun:
    """Mixin for short CPU runs: sets nnU-Net's epoch/iteration counts after its __init__.

    Peak lr 1e-3 (the upper end of the fine-tuning range, nnssl's value): a few hundred iterations
    must get somewhere, and until real RaSD weights are published these runs start from random
    stand-in weights, i.e. they really train from scratch. Warm-up and decay are unchanged.
    """

    peak_lr = 1e-3
    short_epochs = 20
    short_iterations = 12
    short_val_iterations = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.short_epochs
        self.num_iterations_per_epoch = self.short_iterations
        self.num_val_iterations_per_epoch = self.short_val_iterations


class RaSDTrainerSmall_20epochs_cpu(_ShortCPURun, RaSDTrainerSmall):
    """20 epochs of 12 iterations: a few minutes on 2 CPU cores for a small 2D dataset."""


class RaSDTrainerSmallFromScratch_20epochs_cpu(_ShortCPURun, RaSDTrainerSmallFromScratch):
    """From-scratch twin of :class:`RaSDTrainerSmall_20epochs_cpu`."""


class RaSDTrainerSmall_2epochs_cpu(_ShortCPURun, RaSDTrainerSmall):
    """2 epochs of 3 iterations: checks that the pipeline runs, not that it learns."""

    short_epochs = 2
    short_iterations = 3
    short_val_iterations = 1


class RaSDTrainerSmallFromScratch_2epochs_cpu(_ShortCPURun, RaSDTrainerSmallFromScratch):
    short_epochs = 2
    short_iterations = 3
    short_val_iterations = 1
