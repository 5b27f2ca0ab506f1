"""Feature quality without fine-tuning: nearest-prototype segmentation and PCA colouring.

The probe uses the network's own output embedding, the layer PDL pre-trains (``out_channels``
of the weights, e.g. 32), with every weight frozen. For each foreground and background class a
prototype is the mean of the L2-normalised embeddings of that class's voxels over the training
cases; every test voxel takes the class of the most similar prototype (cosine similarity) and the
result is scored with Dice like a fine-tuned prediction. Nothing is trained, so the scores show
what the initialisation alone separates. A scratch init is a random network whose result depends
on its seed; pre-trained weights are deterministic (one value repeated per seed).

:func:`pca_rgb` maps an embedding's first three principal components to RGB (the paper's
Fig. 9/10 analogue: voxels of one tissue should share a colour).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nnunet_plugin.datasets import dice_per_label
from nnunet_plugin.evaluation.data import Case, RawDataset
from nnunet_plugin.evaluation.finetune import (
    RunResult, fit_input_path, pad_to_size, resolve_device, summarise_cases,
)
from nnunet_plugin.evaluation.inits import build_model

__all__ = ["prototype_probe", "pca_rgb", "embed"]


def embed(model, image: np.ndarray, divisor: int, device) -> np.ndarray:
    """(D, *spatial) L2-normalised embedding of a normalised (C, *spatial) image (padded to the
    network's divisor, cropped back)."""
    import torch
    import torch.nn.functional as F

    size = [math.ceil(s / divisor) * divisor for s in image.shape[1:]]
    padded, _ = pad_to_size(image, None, size)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(padded))[None].to(device)
        features = F.normalize(model(x).float(), dim=1)[0]
    crop = (slice(None),) + tuple(slice(0, s) for s in image.shape[1:])
    return features[crop].cpu().numpy()


def prototype_probe(dataset: RawDataset, train: Sequence[Case], test: Sequence[Case],
                    model_name: str, init: str, seed: int, device: str = "auto",
                    keep_embeddings: int = 0):
    """Nearest-prototype Dice of ``init``'s frozen embedding; returns ``(RunResult, extras)``
    where ``extras`` holds up to ``keep_embeddings`` test embeddings for pictures."""
    import torch

    torch.manual_seed(seed)
    built = build_model(model_name, init, num_classes=None, in_chans=dataset.num_channels)
    dev = resolve_device(device)
    # the trainer's input path: nnU-Net's normalisation, then the mapping onto the weights
    intensity = fit_input_path(dataset, train, built.normalization)
    normalize = intensity.normalization
    model = intensity.network(built.model).to(dev).eval()
    divisor = int(model.rasd_config["input_divisor"])
    num_classes = dataset.num_classes
    sums, counts = None, np.zeros(num_classes)
    for case in train:
        f = embed(model, normalize(case.image), divisor, dev)
        flat, lab = f.reshape(f.shape[0], -1), case.label.ravel()
        if sums is None:
            sums = np.zeros((num_classes, f.shape[0]))
        for c in range(num_classes):
            mask = lab == c
            sums[c] += flat[:, mask].sum(1)
            counts[c] += mask.sum()
    present = counts > 0  # a class absent from the training cases gets no prototype
    prototypes = sums[present] / counts[present][:, None]
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True) + 1e-8
    classes = np.flatnonzero(present)
    names = dataset.foreground_labels
    per_case, kept = {}, []
    for case in test:
        image = normalize(case.image)
        f = embed(model, image, divisor, dev)
        similarity = np.tensordot(prototypes, f, axes=(1, 0))  # (P, *spatial)
        prediction = classes[similarity.argmax(0)]
        dice = dice_per_label(prediction, case.label, names)
        per_case[case.case_id] = {names[v]: d for v, d in dice.items()}
        if len(kept) < keep_embeddings:
            kept.append({"case": case, "embedding": f, "prediction": prediction, "image": image})
    per_class, mean_dice = summarise_cases(per_case, list(names.values()))
    result = RunResult(init=init, seed=seed, per_class=per_class, mean_dice=mean_dice,
                       per_case=per_case, source=built.description, intensity=intensity.describe())
    return result, kept


def pca_rgb(embedding: np.ndarray) -> np.ndarray:
    """First three principal components of a (D, *spatial) embedding as uint8 (*spatial, 3),
    each component stretched between its 1st and 99th percentile."""
    d = embedding.shape[0]
    flat = embedding.reshape(d, -1).T.astype(np.float64)
    flat -= flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    components = flat @ vt[:3].T
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    lo, hi = np.percentile(components, 1, axis=0), np.percentile(components, 99, axis=0)
    scaled = np.clip((components - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    return (scaled * 255).astype(np.uint8).reshape(*embedding.shape[1:], 3)
