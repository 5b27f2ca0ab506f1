"""Fine-tune one init on one dataset with a fixed budget and seed, then score the test cases.

The recipe is the same for every init (that is the point of the benchmark), plain PyTorch:

* network: ``rasd_hub.create_model(--model, weights of --init, num_classes, in_chans)``;
* intensities: ``RaSDTrainer``'s path (:mod:`nnunet_plugin.normalization`): nnU-Net's
  normalisation of each channel (CT: clip + z-score with the training foreground's fingerprint;
  otherwise z-score per image), then the network maps ``x * scale + shift`` onto the moments the
  weights were pre-trained on;
* patches: ``patch`` voxels (default: the image extent rounded up to the input divisor, capped at
  128 in 2D / 64 in 3D); images smaller than a patch are padded with their minimum; one patch in
  three is centred on a foreground voxel of a random foreground class (nnU-Net's oversampling, so
  small structures such as tumour are seen at all in short runs);
* augmentation: a random flip per spatial axis and a random contrast (x0.9..1.1) and brightness
  (+-0.1) change of the nnU-Net-normalised patch, nothing else;
* optimisation: AdamW (lr 1e-3, weight decay 1e-4), poly decay (nnU-Net's exponent 0.9),
  cross-entropy + soft Dice over the foreground classes, ``steps`` optimiser steps; optional
  warm-up, frozen-encoder steps, encoder learning-rate scale, 1x1 head and bf16 autocast
  (:class:`FinetuneConfig`);
* seed ``s`` fixes the head (and, for scratch, all) initial weights and, from its own generator,
  the patch/augmentation stream; the normalised images do not depend on the weights, so seed
  ``s`` of every init sees exactly the same training patches: the pairing the paired test relies
  on;
* inference: MONAI sliding-window (window = patch, overlap 0.5, Gaussian weighting) on the whole
  test image, argmax, Dice per foreground class per test case (:func:`dice_per_label`).

Per-case Dice is NaN when a class is in neither the prediction nor the reference (nnU-Net's
convention); class means ignore NaN, and a run's mean Dice is the mean of its class means.
"""

from __future__ import annotations

import math
import time
from functools import partial
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from nnunet_plugin.datasets import dice_per_label
from nnunet_plugin.evaluation.data import Case, RawDataset, Split, load_case
from nnunet_plugin.evaluation.inits import build_model
from rasd_hub._device import resolve_device  # the project's one device resolver (re-exported)
from nnunet_plugin.evaluation.errors import InitError
from nnunet_plugin.normalization import InputPath, fit_nnunet_normalization
from rasd_hub.errors import RasdValueError

__all__ = ["FinetuneConfig", "RunResult", "NEW_HEADS", "PRECISIONS", "encoder_parameters",
           "load_split_cases", "finetune_and_evaluate", "auto_patch_size", "summarise_cases",
           "check_dimensionality", "fit_input_path", "pad_to_size", "resolve_device"]

_PATCH_CAP = {2: 128, 3: 64}
FOREGROUND_FRACTION = 1 / 3


#: what fine-tuning puts on the network for the task's classes (``FinetuneConfig.new_head``)
NEW_HEADS = ("1x1", "top-block")
#: arithmetic of the forward passes (``FinetuneConfig.precision``); the weights stay float32
PRECISIONS = ("fp32", "bf16")


@dataclass
class FinetuneConfig:
    """The budget and recipe shared by every init and seed of one comparison.

    The defaults are the harness's original recipe; the other fields are the fine-tuning
    candidates of the validation study (docs/results.md): ``warmup_steps`` of linear warm-up
    before the poly decay; the encoder frozen for its first ``freeze_encoder_steps``;
    ``encoder_lr_scale`` times the learning rate for the encoder (a discriminative, two-group
    form of layer-wise decay); ``new_head``: ``1x1`` (default, rasd_hub's ``num_classes``, what
    ``RaSDTrainer`` fine-tunes) keeps every pre-trained layer, the embedding output included,
    and adds a 1x1 convolution to the classes; ``top-block`` re-initialises the network's output
    block with one output per class (the harness's recipe before the study chose ``1x1``).
    Scratch gets the same architecture either way. ``precision="bf16"`` runs training and
    inference under ``torch.autocast`` with bfloat16 (weights, optimiser and loss reductions stay
    float32, as in nnU-Net's mixed precision): about 2x faster 3D steps on a CPU with AMX.
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patch: tuple[int, ...] | None = None  # None: auto_patch_size
    device: str = "auto"
    warmup_steps: int = 0
    freeze_encoder_steps: int = 0
    encoder_lr_scale: float = 1.0
    new_head: str = "1x1"
    precision: str = "fp32"

    def __post_init__(self):
        if self.steps < 1:
            raise RasdValueError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise RasdValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        # a warm-up needs steps after it to decay over; the encoder may stay frozen throughout
        for flag, value, most in (("--warmup-steps", self.warmup_steps, self.steps - 1),
                                  ("--freeze-encoder-steps", self.freeze_encoder_steps, self.steps)):
            if not 0 <= value <= most:
                raise RasdValueError(f"{flag} must be in 0..{most} (--steps {self.steps}), got {value}")
        if not self.encoder_lr_scale > 0:
            raise RasdValueError(f"--encoder-lr-scale must be > 0, got {self.encoder_lr_scale}; "
                                 "use --freeze-encoder-steps to freeze the encoder")
        if self.new_head not in NEW_HEADS:
            raise RasdValueError(f"--new-head {self.new_head!r}: choose one of {', '.join(NEW_HEADS)}")
        if self.precision not in PRECISIONS:
            raise RasdValueError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def recipe(self) -> dict[str, Any]:
        """What the report records as its ``config``."""
        return {"backend": "inprocess", "steps": self.steps, "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay,
                "patch": list(self.patch) if self.patch else "auto",
                "warmup_steps": self.warmup_steps, "freeze_encoder_steps": self.freeze_encoder_steps,
                "encoder_lr_scale": self.encoder_lr_scale, "new_head": self.new_head,
                "precision": self.precision}

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier at ``step``: linear warm-up, then poly (exponent 0.9)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return (1 - (step - self.warmup_steps) / (self.steps - self.warmup_steps)) ** 0.9


def encoder_parameters(model) -> list:
    """The parameters of the encoder blocks ``model.encoder_info()`` names (rasd_hub models)."""
    modules = [model.get_submodule(info["module"]) for info in model.encoder_info()]
    seen: dict[int, Any] = {}
    for module in modules:
        for param in module.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


@dataclass
class RunResult:
    init: str
    seed: int
    per_class: dict[str, float]  # class name -> mean Dice over test cases (NaN: undefined)
    mean_dice: float
    per_case: dict[str, dict[str, float]] = field(repr=False)
    final_loss: float = float("nan")
    seconds: float = 0.0
    source: str = ""  # resolved weights (label and sha256) or "scratch"
    intensity: str = ""
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """case id -> predicted labels, for the first ``keep_predictions`` test cases (pictures)."""

    def as_dict(self) -> dict[str, Any]:
        clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
        # field by field: asdict would deep-copy the prediction arrays only to drop them
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "predictions"}
        d["per_class"] = {k: clean(v) for k, v in self.per_class.items()}
        d["per_case"] = {c: {k: clean(v) for k, v in m.items()} for c, m in self.per_case.items()}
        d["mean_dice"], d["final_loss"] = clean(self.mean_dice), clean(self.final_loss)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        """The inverse of :meth:`as_dict` (undefined values back to NaN; no predictions)."""
        nan = lambda x: float("nan") if x is None else x  # noqa: E731
        return cls(**{**d, "per_class": {k: nan(v) for k, v in d["per_class"].items()},
                      "per_case": {c: {k: nan(v) for k, v in m.items()} for c, m in d["per_case"].items()},
                      "mean_dice": nan(d["mean_dice"]), "final_loss": nan(d["final_loss"])})


def load_split_cases(dataset: RawDataset, split: Split) -> tuple[list[Case], list[Case]]:
    """Training and test cases in memory."""
    return [load_case(dataset, c) for c in split.train], [load_case(dataset, c) for c in split.test]


def fit_input_path(dataset: RawDataset, train: Sequence[Case],
                   weights_normalization: dict | None) -> InputPath:
    """``RaSDTrainer``'s input path for weights pre-trained with ``weights_normalization``:
    nnU-Net's normalisation fitted on the training cases only, then the mapping onto the weights."""
    return fit_nnunet_normalization(dataset.channel_names, [c.image for c in train],
                                    [c.label for c in train]).for_weights(weights_normalization)


def check_dimensionality(model_name: str, spatial_dims: int, dataset: RawDataset, data_dims: int) -> None:
    """Refuse a 2D network on 3D cases and the reverse (the comparison trains one kind)."""
    if spatial_dims != data_dims:
        raise InitError(f"--model {model_name!r} is a {spatial_dims}D network but {dataset.folder} "
                        f"holds {data_dims}D cases; use a {data_dims}D model (e.g. "
                        f"rasd{data_dims}d_small).")


def auto_patch_size(cases: Sequence[Case], divisor: int) -> tuple[int, ...]:
    """Largest extent per axis over ``cases``, rounded up to ``divisor``, capped per dimension."""
    spatial = np.max([c.label.shape for c in cases], axis=0)
    cap = _PATCH_CAP.get(len(spatial), 64)
    return tuple(int(min(cap, math.ceil(s / divisor) * divisor)) for s in spatial)


def pad_to_size(image: np.ndarray, label: np.ndarray | None, size: Sequence[int]):
    """Pad (C, *spatial) ``image`` with each channel's minimum (and ``label`` with 0) at the end of
    each axis up to ``size``; returns the padded arrays."""
    pads = [(0, max(0, p - s)) for p, s in zip(size, image.shape[1:])]
    if not any(after for _, after in pads):
        return image, label
    image = np.stack([np.pad(ch, pads, constant_values=float(ch.min())) for ch in image])
    if label is not None:
        label = np.pad(label, pads, constant_values=0)
    return image, label


class PatchSampler:
    """Random training patches and augmentations from one seeded numpy generator."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], patch: Sequence[int],
                 seed: int):
        self.patch = tuple(patch)
        padded = [pad_to_size(i, l, patch) for i, l in zip(images, labels)]
        self.images = [p[0] for p in padded]
        self.labels = [p[1] for p in padded]
        self.rng = np.random.default_rng(seed)
        # foreground voxel coordinates per case and class, found once
        self.foreground = [{int(v): np.argwhere(lab == v) for v in np.unique(lab) if v != 0}
                           for lab in self.labels]

    def _corner(self, index: int) -> list[int]:
        shape = self.labels[index].shape
        fg = self.foreground[index]
        if fg and self.rng.random() < FOREGROUND_FRACTION:
            voxels = fg[list(fg)[self.rng.integers(len(fg))]]
            centre = voxels[self.rng.integers(len(voxels))]
            return [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
        return [int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape)]

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.images)))
            corner = self._corner(i)
            window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
            image, label = self.images[i][(slice(None),) + window], self.labels[i][window]
            for axis in range(label.ndim):
                if self.rng.random() < 0.5:
                    image, label = np.flip(image, axis + 1), np.flip(label, axis)
            image = image * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
            images.append(np.ascontiguousarray(image, dtype=np.float32))
            labels.append(np.ascontiguousarray(label))
        return np.stack(images), np.stack(labels)


def _loss(logits, target, num_classes: int):
    """Cross-entropy + soft Dice over foreground classes (batch Dice, nnU-Net style)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, num_classes).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = (0,) + tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    if probs.shape[1] == 0:  # background only: nothing for Dice to measure
        return ce
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice.mean())


def summarise_cases(per_case: dict[str, dict[str, float]], class_names: Sequence[str]):
    """(per-class mean over cases ignoring NaN, mean of the defined class means)."""
    per_class = {}
    for name in class_names:
        values = [m[name] for m in per_case.values() if not math.isnan(m[name])]
        per_class[name] = float(np.mean(values)) if values else float("nan")
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return per_class, (float(np.mean(defined)) if defined else float("nan"))


def finetune_and_evaluate(dataset: RawDataset, train: list[Case], test: list[Case], model_name: str,
                          init: str, seed: int, config: FinetuneConfig,
                          log=None, keep_predictions: int = 0) -> RunResult:
    """Fine-tune ``init`` on ``train`` for ``config.steps`` steps with ``seed``; Dice on ``test``.

    The predictions of the first ``keep_predictions`` test cases come back in the result."""
    import torch
    from monai.inferers import sliding_window_inference

    start = time.perf_counter()
    device = resolve_device(config.device)
    num_classes = dataset.num_classes
    torch.manual_seed(seed)
    built = build_model(model_name, init, num_classes=num_classes, in_chans=dataset.num_channels,
                        new_head=config.new_head)
    encoder = encoder_parameters(built.model)
    intensity = fit_input_path(dataset, train, built.normalization)
    normalize = intensity.normalization
    model = intensity.network(built.model).to(device)
    data_dims = train[0].label.ndim
    check_dimensionality(model_name, int(model.rasd_config["spatial_dims"]), dataset, data_dims)
    divisor = int(model.rasd_config["input_divisor"])
    patch = tuple(config.patch) if config.patch else auto_patch_size(train, divisor)
    if len(patch) != data_dims or any(p % divisor for p in patch):
        raise RasdValueError(f"--patch {patch}: need {data_dims} sizes, each a multiple of {divisor}")
    sampler = PatchSampler([normalize(c.image) for c in train], [c.label for c in train], patch, seed)

    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    optimiser = torch.optim.AdamW(
        [{"params": rest}, {"params": encoder, "lr": config.lr * config.encoder_lr_scale}],
        lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, config.lr_factor)
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16,
                       enabled=config.precision == "bf16")
    model.train()
    loss_value = float("nan")
    for step in range(config.steps):
        if step in (0, config.freeze_encoder_steps):  # AdamW skips parameters without a gradient
            for param in encoder:
                param.requires_grad_(step >= config.freeze_encoder_steps)
        images, labels = sampler.batch(config.batch_size)
        x = torch.from_numpy(images).to(device)
        y = torch.from_numpy(labels).to(device)
        with autocast():
            loss = _loss(model(x).float(), y, num_classes)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):  # stop at once: the steps after it cannot recover
            hint = ("bf16 autocast can diverge where float32 does not: try --precision fp32, or "
                    "lower --lr" if config.precision == "bf16" else "lower --lr")
            raise RasdValueError(f"{init} seed {seed}: the loss became {loss_value} at step "
                                 f"{step + 1}/{config.steps}; {hint}")
        if log and (step + 1) % max(1, config.steps // 4) == 0:
            log(f"  [{init} seed {seed}] step {step + 1}/{config.steps} loss {loss_value:.4f}")

    model.eval()
    names = dataset.foreground_labels
    per_case: dict[str, dict[str, float]] = {}
    kept: dict[str, np.ndarray] = {}
    with torch.no_grad(), autocast():
        for case in test:
            image, _ = pad_to_size(normalize(case.image), None, patch)
            x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
            logits = sliding_window_inference(x, patch, sw_batch_size=4, predictor=model,
                                              overlap=0.5, mode="gaussian")
            prediction = logits.argmax(1)[0].cpu().numpy()
            prediction = prediction[tuple(slice(0, s) for s in case.label.shape)]
            dice = dice_per_label(prediction, case.label, names)
            per_case[case.case_id] = {names[v]: d for v, d in dice.items()}
            if len(kept) < keep_predictions:
                kept[case.case_id] = prediction.astype(np.uint8)
    per_class, mean_dice = summarise_cases(per_case, list(names.values()))
    return RunResult(init=init, seed=seed, per_class=per_class, mean_dice=mean_dice,
                     per_case=per_case, final_loss=loss_value,
                     seconds=round(time.perf_counter() - start, 2), source=built.description,
                     intensity=intensity.describe(), predictions=kept)
