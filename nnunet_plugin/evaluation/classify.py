"""Image-level classification with a pre-trained rasd encoder vs scratch (``rasd eval classify``).

The 2D task (``tiles2d``) is built from the project's own real data: 32x32 tiles of the axial slices of the LiTS
liver CT (:func:`nnunet_plugin.datasets.load_liver_ct`), labelled "contains tumour" (at least
``positive_fraction`` of the tile is tumour) or "no tumour" (no tumour voxel); tiles in between
are left out as ambiguous. Every slice of that crop holds some tumour, so the task is tile-level.
Slices split by position along z (train below, test above, with a gap), so neighbouring,
nearly identical slices never fall on both sides. Intensities take ``RaSDTrainer``'s path
(:mod:`nnunet_plugin.normalization`): nnU-Net's CTNormalization with the training slices'
foreground fingerprint, then the network maps them onto the moments of each init's weights.
Each init gets the same model
(``create_model(..., head="classifier")``: encoder + global pooling + linear layer), the same
seeds, data order and schedule; the test AUC is compared with a paired t-test over seeds.
The 3D task (``blocks3d``) asks the same of 32^3 blocks of the volume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nnunet_plugin.normalization import NnUNetNormalization, fit_nnunet_normalization

__all__ = ["TileTask", "liver_tumour_tiles", "liver_tumour_blocks", "TASKS", "roc_auc",
           "classify_compare"]


@dataclass
class TileTask:
    train_x: np.ndarray  # (N, 1, T, T) float32, normalised as nnU-Net would (CTNormalization)
    train_y: np.ndarray  # (N,) 0/1
    test_x: np.ndarray
    test_y: np.ndarray
    description: str
    normalization: NnUNetNormalization  # how train_x / test_x were normalised


def _normalized_ct(image: np.ndarray, label: np.ndarray, train_z):
    """The CT volume through nnU-Net's CTNormalization, fingerprinted on the ``train_z`` slices."""
    normalization = fit_nnunet_normalization({"0": "CT"}, [image[None, train_z]], [label[train_z]])
    return normalization(image[None])[0], normalization


def _windows(scaled, label, z_starts, depth: int, size: int, stride: int, positive_fraction: float):
    """(x (N, 1, [depth,] size, size), y): windows of ``depth`` slices from each z start, labelled
    1 with >= ``positive_fraction`` tumour, 0 with none, left out in between."""
    xs, ys = [], []
    _, h, w = scaled.shape
    for z0 in z_starts:
        for y0 in range(0, h - size + 1, stride):
            for x0 in range(0, w - size + 1, stride):
                window = (slice(z0, z0 + depth), slice(y0, y0 + size), slice(x0, x0 + size))
                frac = float((label[window] == 2).mean())
                if frac == 0 or frac >= positive_fraction:
                    xs.append(scaled[window])
                    ys.append(int(frac > 0))
    x = np.stack(xs).astype(np.float32)
    return (x if depth > 1 else x[:, 0])[:, None], np.array(ys, dtype=np.int64)


def liver_tumour_tiles(cache_dir=None, *, tile: int = 32, slice_step: int = 2, split_z: int = 80,
                       gap: int = 8, positive_fraction: float = 0.05) -> TileTask:
    """The tile task (see the module docstring); the CT window comes from the training slices
    only."""
    from nnunet_plugin.datasets import load_liver_ct

    image, label = load_liver_ct(cache_dir)
    z = image.shape[0]
    train_z = list(range(0, split_z, slice_step))
    test_z = list(range(split_z + gap, z, slice_step))
    scaled, normalization = _normalized_ct(image, label, train_z)
    train_x, train_y = _windows(scaled, label, train_z, 1, tile, tile, positive_fraction)
    test_x, test_y = _windows(scaled, label, test_z, 1, tile, tile, positive_fraction)
    desc = (f"LiTS liver CT img_117, {tile}x{tile} axial tiles, 'contains tumour' (>= "
            f"{positive_fraction:.0%} tumour) vs none; train z {train_z[0]}..{train_z[-1]} step "
            f"{slice_step} ({len(train_y)} tiles, {int(train_y.sum())} positive), test z "
            f"{test_z[0]}..{test_z[-1]} ({len(test_y)} tiles, {int(test_y.sum())} positive)")
    return TileTask(train_x, train_y, test_x, test_y, desc, normalization)


def liver_tumour_blocks(cache_dir=None, *, block: int = 32, stride: int = 16, split_z: int = 64,
                        gap: int = 16, positive_fraction: float = 0.05) -> TileTask:
    """The 3D version: ``block``^3 blocks (``stride`` apart) of the same CT, "contains tumour";
    blocks starting below ``split_z - block`` train, those from ``split_z + gap`` on test."""
    from nnunet_plugin.datasets import load_liver_ct

    image, label = load_liver_ct(cache_dir)
    z = image.shape[0]
    train_z = list(range(0, split_z - block + 1, stride))
    test_z = list(range(split_z + gap, z - block + 1, stride))
    scaled, normalization = _normalized_ct(image, label, list(range(split_z)))
    train_x, train_y = _windows(scaled, label, train_z, block, block, stride, positive_fraction)
    test_x, test_y = _windows(scaled, label, test_z, block, block, stride, positive_fraction)
    desc = (f"LiTS liver CT img_117, {block}^3 blocks (stride {stride}), 'contains tumour' (>= "
            f"{positive_fraction:.0%} tumour) vs none; train z0 {train_z[0]}..{train_z[-1]} "
            f"({len(train_y)} blocks, {int(train_y.sum())} positive), test z0 {test_z[0]}..{test_z[-1]} "
            f"({len(test_y)} blocks, {int(test_y.sum())} positive)")
    return TileTask(train_x, train_y, test_x, test_y, desc, normalization)


#: the tasks `rasd eval classify --task` offers
TASKS = {"tiles2d": liver_tumour_tiles, "blocks3d": liver_tumour_blocks}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUC needs both classes in the labels")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _train_and_score(model, task: TileTask, *, seed: int, epochs: int, batch: int, lr: float) -> float:
    import torch

    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x, y = torch.from_numpy(task.train_x), torch.from_numpy(task.train_y)
    model.train()
    for _ in range(epochs):
        order = gen.permutation(len(y))
        for i in range(0, len(order) - batch + 1, batch):
            idx = torch.from_numpy(order[i:i + batch])
            xb = x[idx]
            flips = torch.from_numpy(gen.random(2) < 0.5)  # flips: the same draws for every init
            if flips[0]:
                xb = xb.flip(-1)
            if flips[1]:
                xb = xb.flip(-2)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(task.test_x[i:i + 256]))
                            for i in range(0, len(task.test_x), 256)])
    score = torch.softmax(logits, dim=1)[:, 1].numpy()
    return roc_auc(score, task.test_y)


def classify_compare(model_name: str, inits: Sequence[str], *, task: str = "tiles2d", seeds: int = 3,
                     epochs: int = 3, batch: int = 32, lr: float = 1e-3, cache_dir=None) -> dict[str, Any]:
    """Test AUC per init and seed, and each init's paired test against the first."""
    import torch

    from nnunet_plugin.evaluation.inits import build_model
    from nnunet_plugin.evaluation.stats import mean_ci, paired_test

    t0 = time.perf_counter()
    # one task for every init: the normalised tiles do not depend on the weights (the network maps)
    tile_task = TASKS[task](cache_dir)
    results: dict[str, dict[str, Any]] = {}
    for init in inits:
        aucs, described, intensity = [], "", ""
        for seed in range(seeds):
            torch.manual_seed(seed)  # the same new layers for every init
            built = build_model(model_name, init, 2, 1, head="classifier")
            path = tile_task.normalization.for_weights(built.normalization)
            aucs.append(_train_and_score(path.network(built.model), tile_task, seed=seed,
                                         epochs=epochs, batch=batch, lr=lr))
            described, intensity = built.description, path.describe()
        results[init] = {"weights": described, "intensity": intensity, "auc": aucs,
                         "mean": mean_ci(aucs).as_dict()}
    reference = inits[0]
    for init in inits[1:]:
        results[init]["vs_" + reference] = paired_test(results[reference]["auc"], results[init]["auc"]).as_dict()
    return {"task": tile_task.description, "task_name": task, "model": model_name, "seeds": seeds,
            "epochs": epochs, "batch": batch, "lr": lr, "results": results,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads()}
