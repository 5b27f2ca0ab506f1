"""nnU-Net v2 trainers for RaSD plans: ``nnUNetv2_train D CFG FOLD -p RaSDPlans -tr RaSDTrainer``.

The plans say which network to train and which weights it starts from (``rasd nnunet plan``,
:mod:`nnunet_plugin.planning`); the trainers do not change the plans. Each class is a small
subclass that changes one thing, like nnU-Net's own trainer variants:

=========================================  ==================================================
trainer                                    what it changes
=========================================  ==================================================
``RaSDTrainer``                            loads the plans' weights; AdamW, warm-up + poly;
                                           seeded epochs
``RaSDTrainerFromScratch``                 the same plans, randomly initialised
``RaSDTrainerSmall``                       peak lr 1e-3 instead of 3e-4
``RaSDTrainerSmallFromScratch``            ... randomly initialised
``RaSDTrainerSmall_20epochs_cpu``          20 short epochs, a checkpoint every epoch
``RaSDTrainerSmall_2epochs_cpu``           2 tiny epochs (smoke tests)
``RaSDTrainerSGD``                         nnssl's CNN fine-tuning optimiser: SGD, peak lr 1e-3
(``...FromScratch_...`` twins)
``nnUNetTrainer_RaSDBudget_20epochs_cpu``  nnU-Net's own trainer at the short CPU budget
                                           (baseline with nnU-Net's default plans)
=========================================  ==================================================

What a fold does, in nnU-Net's order:

* ``__init__``: refuses plans that are not RaSD plans (the message says how to plan); logs the
  plans' network, weights, patch, batch and intensity mapping.
* ``initialize`` (start of training): builds the network from the plans, then copies in the
  plans' weights, sha256-checked (``RASD_WEIGHTS`` may replace them with weights of the same
  architecture), and the input mapping that fits those weights. Under DDP every rank ends with
  rank 0's weights. Nothing is loaded when nnU-Net restores one of its own checkpoints
  (``--c`` with a checkpoint, ``--val``, ``--val_best``): the checkpoint holds the trained weights,
  the fold's own mapping and the identity of the weights it started from.
* every epoch starts from a seed derived from ``RASD_SEED`` (default 0), the fold and the epoch,
  so that, with ``nnUNet_n_proc_DA=0`` on a CPU, a run resumed with ``--c`` continues exactly as the
  uninterrupted run (nnU-Net's multi-process augmentation is not reproducible either way), and a
  pre-trained fold and its from-scratch twin see the same patches.
* checkpoints are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import random
import sys
import zlib

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_plugin import pretrained
from nnunet_plugin.errors import PlansError
from nnunet_plugin.network import has_deep_supervision, is_rasd_architecture
from nnunet_plugin.normalization import plan_input_mapping
from nnunet_plugin.planning import planned_weights
from nnunet_plugin.schedule import WarmupPolyLR, warmup_epochs_for
from rasd_hub.errors import RasdError

__all__ = [
    "RaSDTrainer", "RaSDTrainerFromScratch", "RaSDTrainerSmall", "RaSDTrainerSmallFromScratch",
    "RaSDTrainerSmall_20epochs_cpu", "RaSDTrainerSmallFromScratch_20epochs_cpu",
    "RaSDTrainerSmall_2epochs_cpu", "RaSDTrainerSmallFromScratch_2epochs_cpu", "RaSDTrainerSGD",
    "RaSDTrainerSGDFromScratch", "RaSDTrainerSGD_20epochs_cpu", "RaSDTrainerSGDFromScratch_20epochs_cpu",
    "nnUNetTrainer_RaSDBudget_20epochs_cpu", "SEED_VAR",
]

SEED_VAR = "RASD_SEED"


def _report_rasd_errors_briefly() -> None:
    """Make an uncaught RaSD error end an nnU-Net command with its message, not a traceback.

    nnU-Net's commands print every exception with a long traceback through its own code; ours
    already say what was wrong and what to do. Only uncaught :class:`RasdError` is affected.
    """
    previous = sys.excepthook
    if getattr(previous, "_rasd", False):
        return

    def hook(kind, value, traceback):
        if isinstance(value, RasdError):
            notes = "".join(f"\n{n}" for n in getattr(value, "__notes__", []))
            print(f"RaSD: error: {value}{notes}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    hook._rasd = True
    sys.excepthook = hook


def _check_rasd_plans(plans: dict, configuration: str) -> None:
    name = plans.get("plans_name", "?")
    config = plans.get("configurations", {}).get(configuration)
    if config is None or not is_rasd_architecture(config.get("architecture")) or \
            planned_weights(plans) is None:
        dataset = plans.get("dataset_name", "DATASET")
        raise PlansError(
            f"plans {name!r} of {dataset} are not RaSD plans for configuration {configuration!r}. "
            f"RaSD trainers train plans written by `rasd nnunet plan -d {dataset} --weights W` "
            f"(e.g. W = rasd2d_small), then `nnUNetv2_train {dataset} {configuration} FOLD -p "
            "RaSDPlans -tr RaSDTrainer`.")


class RaSDTrainer(nnUNetTrainer):
    """Fine-tune the pre-trained network the RaSD plans name.

    Optimiser: AdamW, peak lr 3e-4, weight decay 1e-5, the RaSD paper's adaptation setting; 3e-4
    with AdamW is also what Primus (nnU-Net's transformer baseline) uses, and nnU-Net's SGD at 1e-2
    is known to train transformers (Swin UNETR) poorly. Schedule: linear warm-up over 5 % of the
    epochs (50 of 1000, as nnssl fine-tunes), so the large early gradients coming back from the new,
    random head do not wreck the pre-trained features; then nnU-Net's poly decay.
    """

    load_pretrained_weights = True
    peak_lr = 3e-4
    fine_tune_weight_decay = 1e-5
    warmup_fraction = 0.05

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        _report_rasd_errors_briefly()
        _check_rasd_plans(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.peak_lr
        self.weight_decay = self.fine_tune_weight_decay
        # the ResEnc U-Nets train with nnU-Net's deep supervision; the MONAI networks have one output
        self.enable_deep_supervision = has_deep_supervision(
            self.configuration_manager.network_arch_init_kwargs["rasd_model_args"])
        self.seed = int(os.environ.get(SEED_VAR, "0"))
        self._restoring_nnunet_checkpoint = False
        self._log_plans()

    def _log_plans(self) -> None:
        weights = planned_weights(self.plans_manager.plans)
        arch = self.configuration_manager.network_arch_init_kwargs
        rasd = self.configuration_manager.configuration.get("rasd", {})
        self.print_to_log_file(
            f"RaSD: plans {self.plans_manager.plans_name}: {arch['rasd_architecture']} "
            f"{json.dumps(arch['rasd_model_args'])}; weights "
            + (f"{weights['source']} sha256 {weights['sha256']}" if self.load_pretrained_weights
               else f"none (from scratch; the plans name {weights['source']})"))
        self.print_to_log_file(
            f"RaSD: patch {self.configuration_manager.patch_size} (nnU-Net planned "
            f"{rasd.get('nnunet_patch_size')}), batch {self.configuration_manager.batch_size} "
            f"(nnU-Net planned {rasd.get('nnunet_batch_size')}), seed {self.seed}")
        for c, line in enumerate(rasd.get("input_mapping", [])):
            self.print_to_log_file(f"RaSD: intensity channel {c} (plans): {line}")

    # ------------------------------------------------------------------ weights

    def _bare_network(self):
        """The RaSDNetwork inside DDP / torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def initialize(self):
        self._seed(epoch=-1)  # initial weights (the whole network from scratch, else the head)
        super().initialize()
        if self.load_pretrained_weights and not self._restoring_nnunet_checkpoint:
            self._load_pretrained_weights()

    def _load_pretrained_weights(self) -> None:
        override = os.environ.get(pretrained.ENV_VAR, "").strip() or None
        weights = pretrained.weights_for_fold(
            planned_weights(self.plans_manager.plans), self.configuration_manager.network_arch_init_kwargs,
            in_chans=self.num_input_channels, num_classes=self.label_manager.num_segmentation_heads,
            override=override)
        mappings = plan_input_mapping(self.configuration_manager.normalization_schemes,
                                      weights.config["normalization"])
        network = self._bare_network()
        pretrained.copy_into(network, weights, [m.scale for m in mappings], [m.shift for m in mappings])
        if self.is_ddp:
            pretrained.broadcast_from_rank0(network)
        self.print_to_log_file(
            f"RaSD: loaded {weights.describe()}"
            + (f" (from {pretrained.ENV_VAR}, replacing the plans' weights)" if override else "")
            + f"\n{weights.report}")
        for c, m in enumerate(mappings):
            self.print_to_log_file(f"RaSD: intensity channel {c} (these weights): {m.explanation}")

    def load_checkpoint(self, filename_or_checkpoint):
        # nnU-Net calls this for --c, --val and --val_best: its checkpoint holds the trained weights,
        # the fold's input mapping and the weights' identity, so nothing must be loaded first.
        self._restoring_nnunet_checkpoint = True
        super().load_checkpoint(filename_or_checkpoint)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        from rasd_hub._io import atomic_path, remove_stale_temporaries

        # rank 0 is the fold folder's only writer: what a run killed mid-write left can go
        remove_stale_temporaries(os.path.dirname(filename))
        # a run killed while writing keeps its previous checkpoint instead of a truncated one
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    # ------------------------------------------------------------------ training

    def on_train_start(self):
        self._refuse_other_plans_in_results()
        super().on_train_start()

    def _refuse_other_plans_in_results(self) -> None:
        """Folds of one results folder share its plans.json (nnU-Net's predictor builds every
        fold from it): a fold planned for another network must not overwrite it."""
        path = os.path.join(self.output_folder_base, "plans.json")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            theirs = json.load(f).get("configurations", {}).get(self.configuration_name, {})

        def network(config: dict) -> tuple:
            kwargs = (config.get("architecture") or {}).get("arch_kwargs", {})
            return kwargs.get("rasd_architecture"), kwargs.get("rasd_model_args")

        if network(theirs) != network(self.configuration_manager.configuration):
            raise PlansError(
                f"{self.output_folder_base} holds folds of a {network(theirs)[0]} with arguments "
                f"{network(theirs)[1]}; these plans describe another network. Write these plans "
                "under another name (`rasd nnunet plan ... --plans-name NAME`) so folds do not mix.")

    def _seed(self, epoch: int) -> None:
        fold = zlib.crc32(str(self.fold).encode())
        state = np.random.SeedSequence([self.seed, fold, epoch + 1, self.local_rank]).generate_state(1)
        value = int(state[0])
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    def on_train_epoch_start(self):
        self._seed(self.current_epoch)
        super().on_train_epoch_start()

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                 weight_decay=self.weight_decay)

    def configure_optimizers(self):
        optimizer = self._optimizer()
        warmup = warmup_epochs_for(self.num_epochs, self.warmup_fraction)
        scheduler = WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, warmup)
        self.print_to_log_file(f"RaSD: {type(optimizer).__name__} lr {self.initial_lr:g} weight decay "
                               f"{self.weight_decay:g}, linear warm-up {warmup} epoch(s) then poly "
                               f"decay to epoch {self.num_epochs}")
        return optimizer, scheduler

    def set_deep_supervision_enabled(self, enabled: bool):
        # rasd_hub's MONAI networks have a single output: nothing to switch (the base reaches for
        # .decoder.deep_supervision, which only the ResEnc U-Nets have)
        if self.enable_deep_supervision:
            super().set_deep_supervision_enabled(enabled)


class RaSDTrainerFromScratch(RaSDTrainer):
    """The honest baseline: the same plans (network, patch, batch, input mapping), schedule and
    seeds as :class:`RaSDTrainer`, random initialisation."""

    load_pretrained_weights = False


class RaSDTrainerSmall(RaSDTrainer):
    """Peak lr 1e-3 (nnssl's fine-tuning value) instead of 3e-4: what the project uses for its
    CPU-sized networks (rasd2d_small / rasd3d_small plans) and short budgets, where 3e-4 learns too
    little (a 240-iteration CPU run on CT liver slices reached Dice 0.02 at 3e-4, 0.83 at 1e-3)."""

    peak_lr = 1e-3


class RaSDTrainerSmallFromScratch(RaSDTrainerSmall):
    """From-scratch twin of :class:`RaSDTrainerSmall`."""

    load_pretrained_weights = False


class RaSDTrainerSGD(RaSDTrainer):
    """nnssl's fine-tuning optimiser for pre-trained CNNs (the Residual Encoder U-Nets): nnU-Net's
    SGD (momentum 0.99, Nesterov, weight decay 3e-5) at peak lr 1e-3 instead of AdamW, with the
    same warm-up and poly decay."""

    peak_lr = 1e-3
    fine_tune_weight_decay = 3e-5

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                               momentum=0.99, nesterov=True)


class RaSDTrainerSGDFromScratch(RaSDTrainerSGD):
    """From-scratch twin of :class:`RaSDTrainerSGD`."""

    load_pretrained_weights = False


class _ShortCPURun:
    """Mixin for short CPU runs: nnU-Net's epoch/iteration counts after its __init__, and a
    checkpoint after every epoch (``--c`` then loses at most one short epoch)."""

    short_epochs = 20
    short_iterations = 12
    short_val_iterations = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.short_epochs
        self.num_iterations_per_epoch = self.short_iterations
        self.num_val_iterations_per_epoch = self.short_val_iterations
        self.save_every = 1


class RaSDTrainerSmall_20epochs_cpu(_ShortCPURun, RaSDTrainerSmall):
    """20 epochs of 12 iterations from the plans' weights: minutes on 2 CPU cores for a small 2D
    dataset."""


class RaSDTrainerSmallFromScratch_20epochs_cpu(_ShortCPURun, RaSDTrainerSmallFromScratch):
    """From-scratch twin of :class:`RaSDTrainerSmall_20epochs_cpu`."""


class RaSDTrainerSmall_2epochs_cpu(_ShortCPURun, RaSDTrainerSmall):
    """2 epochs of 3 iterations from the plans' weights: checks that the pipeline runs, not that
    it learns."""

    short_epochs = 2
    short_iterations = 3
    short_val_iterations = 1


class RaSDTrainerSmallFromScratch_2epochs_cpu(_ShortCPURun, RaSDTrainerSmallFromScratch):
    """From-scratch twin of :class:`RaSDTrainerSmall_2epochs_cpu`."""

    short_epochs = 2
    short_iterations = 3
    short_val_iterations = 1


class RaSDTrainerSGD_20epochs_cpu(_ShortCPURun, RaSDTrainerSGD):
    """20 epochs of 12 iterations of :class:`RaSDTrainerSGD`."""


class RaSDTrainerSGDFromScratch_20epochs_cpu(_ShortCPURun, RaSDTrainerSGDFromScratch):
    """From-scratch twin of :class:`RaSDTrainerSGD_20epochs_cpu`."""


class nnUNetTrainer_RaSDBudget_20epochs_cpu(_ShortCPURun, nnUNetTrainer):
    """nnU-Net's own trainer (its network, SGD 1e-2, poly) at the short CPU variants' budget: the
    baseline nnU-Net users compare against, with nnU-Net's default plans."""
