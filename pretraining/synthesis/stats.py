"""Statistics of synthetic batches, to check the engine and compare implementations.

Per-sample statistics take ``label`` (B, *spatial) int64 and ``image`` (B, 1, *spatial).
:func:`summarize` reduces a batch to a few numbers; :func:`compare` checks two summaries against
:data:`MATCH_TOLERANCES`, the tolerances within which two generators count as the same
distribution in this project's tests and benchmark.
"""

from __future__ import annotations

import torch

__all__ = [
    "class_volume_fractions",
    "empty_class_fraction",
    "surface_to_volume",
    "per_sample",
    "summarize",
    "standard_errors",
    "compare",
    "MATCH_TOLERANCES",
]

# statistic -> (kind, tolerance): "abs" bounds |a - b|, "rel" bounds |a - b| / |b|
MATCH_TOLERANCES: dict[str, tuple[str, float]] = {
    "empty_class_fraction": ("abs", 0.05),
    "largest_class_fraction": ("abs", 0.05),
    "surface_to_volume": ("rel", 0.10),
    "image_mean": ("abs", 0.05),
    "image_std": ("abs", 0.03),
    "image_gradient": ("rel", 0.15),
}


def class_volume_fractions(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, I) fraction of each sample's voxels in each class (rows sum to 1)."""
    batch = label.shape[0]
    offsets = torch.arange(batch, device=label.device).view(batch, *(1,) * (label.dim() - 1)) * num_classes
    counts = torch.bincount((label + offsets).flatten(), minlength=batch * num_classes)
    return counts.view(batch, num_classes).double() / label[0].numel()


def empty_class_fraction(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) fraction of the classes that have no voxel in the sample."""
    return (class_volume_fractions(label, num_classes) == 0).double().mean(1)


def surface_to_volume(label: torch.Tensor) -> torch.Tensor:
    """(B,) boundary complexity: voxel faces between different labels per voxel.

    Counts every pair of face-adjacent voxels with different labels along every axis, divided by
    the number of voxels. Smooth blobs score low; ragged or fragmented boundaries score high.
    """
    faces = torch.zeros(label.shape[0], dtype=torch.float64, device=label.device)
    for axis in range(1, label.dim()):
        extent = label.shape[axis]
        differs = label.narrow(axis, 0, extent - 1) != label.narrow(axis, 1, extent - 1)
        faces += differs.flatten(1).sum(1)
    return faces / label[0].numel()


def _mean_gradient(image: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute difference between face-adjacent voxels (texture / noise level)."""
    x = image.flatten(0, 1)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for axis in range(1, x.dim()):
        extent = x.shape[axis]
        total += (x.narrow(axis, 1, extent - 1) - x.narrow(axis, 0, extent - 1)).abs().flatten(1).double().mean(1)
    return total / (x.dim() - 1)


def per_sample(image: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """(B,) values of every statistic of :data:`MATCH_TOLERANCES`, one per sample."""
    fractions = class_volume_fractions(label, num_classes)
    flat = image.flatten(1).double()
    return {
        "empty_class_fraction": (fractions == 0).double().mean(1),
        "largest_class_fraction": fractions.max(1).values,
        "surface_to_volume": surface_to_volume(label),
        "image_mean": flat.mean(1),
        "image_std": flat.std(1),
        "image_gradient": _mean_gradient(image),
    }


def summarize(image: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Batch means of the label and image statistics (see :data:`MATCH_TOLERANCES` for the keys)."""
    return {name: float(values.mean()) for name, values in per_sample(image, label, num_classes).items()}


def standard_errors(image: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Standard error of each batch mean of :func:`summarize` (sample std / sqrt(B)): these
    statistics vary a lot from sample to sample, so a few samples cannot resolve small biases."""
    values = per_sample(image, label, num_classes)
    count = label.shape[0]
    return {name: float(v.std() / count**0.5) if count > 1 else float("nan") for name, v in values.items()}


def compare(candidate: dict[str, float], reference: dict[str, float],
            candidate_errors: dict[str, float] | None = None,
            reference_errors: dict[str, float] | None = None) -> list[dict]:
    """One row per statistic: both values, the difference, the tolerance and whether it holds.

    With the standard errors of both summaries, each row also gets ``z``: the difference of the
    two means in units of its standard error (|z| below 2 is what sampling noise alone gives
    in 95 % of comparisons)."""
    rows = []
    for name, (kind, tolerance) in MATCH_TOLERANCES.items():
        a, b = candidate[name], reference[name]
        difference = abs(a - b) if kind == "abs" else abs(a - b) / max(abs(b), 1e-12)
        row = {
            "statistic": name, "fast": a, "reference": b, "difference": difference,
            "kind": kind, "tolerance": tolerance, "ok": difference <= tolerance,
        }
        if candidate_errors is not None and reference_errors is not None:
            error = (candidate_errors[name] ** 2 + reference_errors[name] ** 2) ** 0.5
            row["z"] = (a - b) / error if error > 0 else 0.0
        rows.append(row)
    return rows
