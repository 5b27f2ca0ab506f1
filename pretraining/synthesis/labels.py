"""Mask engine: random per-class heatmaps, warped by random deformations, then argmax.

The released algorithm, per sample: for each class, Gaussian noise grids at two coarse scales are
upsampled (linear) to full resolution and summed into a heatmap; a deformation field is built the
same way with one channel per axis; each heatmap is warped (linear, zero padding) and the label is
the argmax over classes.

Here the heatmaps are built at every voxel exactly as released (separable GEMMs, cheap), but the
expensive part, one warp lookup per class and voxel followed by an argmax over classes, runs on a
lattice of points ``k = config.mask_lattice_spacing`` voxels apart: the deformations are evaluated
there exactly, the heatmaps sampled there exactly, and the warped heatmaps are linearly
interpolated in between before the argmax. Linear interpolation is a convex combination of a
cell's corners, so in a cell whose corners all share the same argmax every voxel has that label:
only "mixed" cells, where a boundary passes, are interpolated voxel by voxel. This is exact for the
interpolated heatmaps; the interpolation itself slightly smooths the finest boundary detail, which
the tests and the benchmark bound (``k = 1`` evaluates every voxel, like the released code).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .config import SynthesisConfig
from .fields import interpolate_sum, uniform

__all__ = ["draw_labels"]


def draw_labels(config: SynthesisConfig, batch: int, generator, device) -> torch.Tensor:
    """Draws a batch of label maps (B, *size) int64 (see the module docstring)."""
    dim, size, k = config.dim, config.size, config.mask_lattice_spacing
    cells = tuple(math.ceil(s / k) for s in size)
    # Lattice points every k voxels; the last one may overhang the volume and is pulled back to
    # its last voxel, so every point is evaluated inside the volume (the last cell is squeezed).
    lattice = [(torch.arange(c + 1, device=device) * k).clamp(max=s - 1).float() for c, s in zip(cells, size)]
    heatmaps = _heatmaps(config, batch, generator, device)
    fields = config.num_classes if config.deformation_per_class else 1
    sample_at = _sampling_grid(config, batch, fields, lattice, generator, device)
    # Zero padding outside the volume, like the released code's warp of its full-size heatmaps.
    logits = F.grid_sample(
        heatmaps.view(batch * fields, -1, *heatmaps.shape[2:]), sample_at,
        mode="bilinear", padding_mode="zeros", align_corners=True,
    )
    return _label_cells(logits.view(batch, config.num_classes, *logits.shape[2:]), k, size)


def _grid_shape(size: tuple[int, ...], scale: int) -> tuple[int, ...]:
    return tuple(s // scale for s in size)


def _heatmaps(config: SynthesisConfig, batch: int, generator, device) -> torch.Tensor:
    """Per-class heatmaps at every voxel (B, I, *size), as the released code builds them: each
    scale's noise grid linearly interpolated over the volume, summed. Cheap: separable GEMMs."""
    dim, size, classes = config.dim, config.size, config.num_classes
    noises = []
    for scale in config.heatmap_scales:
        std = uniform(config.heatmap_std_range, (batch,), generator, device)
        noise = torch.randn(batch, classes, *_grid_shape(size, scale), generator=generator, device=device)
        noises.append((noise * std.view(batch, *(1,) * (dim + 1))).flatten(0, 1))
    voxels = [torch.arange(s, device=device) for s in size]
    return interpolate_sum(noises, voxels, size).view(batch, classes, *size)


def _sampling_grid(config, batch, fields, lattice, generator, device) -> torch.Tensor:
    """Where each lattice point samples the heatmaps, as a ``grid_sample`` grid (B*fields, *lattice, dim):
    normalised coordinates, x (the last axis) first (a channels-last view, which grid_sample reads
    as fast as a contiguous grid)."""
    dim, size = config.dim, config.size
    # component c of the grid moves spatial axis dim-1-c; 2/(S-1) turns voxels into grid units
    extents = torch.tensor(size[::-1], device=device, dtype=torch.float32)
    to_unit = 2.0 / (extents - 1)
    offset = torch.full_like(extents, -1.0)
    if config.released_warp_coordinates:  # u -> u * S/(S-1) - 1/2, see the config field
        to_unit = to_unit * extents / (extents - 1)
        offset = -1.0 - 1.0 / (extents - 1)
    if config.deformation_std_range[1] == 0:
        base = torch.stack(torch.meshgrid(*lattice, indexing="ij")[::-1], dim=-1) * to_unit + offset
        return base.expand(batch * fields, *base.shape)
    noises = []
    for scale in config.deformation_scales:
        std = uniform(config.deformation_std_range, (batch,), generator, device)
        noise = torch.randn(batch, fields, dim, *_grid_shape(size, scale), generator=generator, device=device)
        noise = noise * (std.view(batch, 1, 1, *(1,) * dim) * to_unit.view(dim, *(1,) * dim))
        noises.append(noise)
    # The identity part (voxel position in grid units) is linear, and linear interpolation
    # reproduces a linear function exactly: add it to one noise grid's knots instead of adding a
    # full-size base grid afterwards.
    grid = noises[0]
    for c in range(dim):
        axis = dim - 1 - c
        points = grid.shape[3 + axis]
        knots = torch.linspace(0, size[axis] - 1, points, device=device)
        shape = [1] * dim
        shape[axis] = points
        grid[:, :, c] += (knots * to_unit[c] + offset[c]).view(shape)
    displacement = interpolate_sum([n.flatten(0, 2) for n in noises], lattice, size)
    return displacement.view(batch * fields, dim, *displacement.shape[1:]).movedim(1, -1)


def _label_cells(logits: torch.Tensor, k: int, size: tuple[int, ...]) -> torch.Tensor:
    """Labels (B, *size) from the lattice logits (B, I, *lattice): every voxel of a cell whose
    corners share their argmax gets that label; the voxels of the other ("mixed") cells get the
    argmax of their multilinearly interpolated logits.

    Written with few, large tensor operations: on a CPU shared with other jobs every parallel
    operation pays a fixed synchronisation cost, whatever its size."""
    batch, classes = logits.shape[:2]
    lattice = logits.shape[2:]
    dim = len(lattice)
    cells = tuple(n - 1 for n in lattice)
    corners = list(itertools.product((0, 1), repeat=dim))
    channels_last = logits.movedim(1, -1).contiguous()  # argmax over a contiguous last axis is fast
    winner = channels_last.argmax(-1)  # (B, *lattice)
    # A cell is mixed when its corners disagree: the max and min of the corner labels differ.
    pool = F.max_pool3d if dim == 3 else F.max_pool2d
    as_float = winner.unsqueeze(1).to(logits.dtype)
    mixed = (pool(as_float, 2, 1) != -pool(-as_float, 2, 1)).squeeze(1)  # (B, *cells)
    cell_labels = winner[(slice(None), *(slice(0, c) for c in cells))]

    out = torch.empty(batch, *(c * k for c in cells), dtype=torch.int64, device=logits.device)
    # (B, c1, k, c2, k, ...): every cell's block of voxels, written by one broadcast copy
    blocks = out.view(batch, *itertools.chain.from_iterable((c, k) for c in cells))
    blocks.copy_(cell_labels.view(batch, *itertools.chain.from_iterable((c, 1) for c in cells)).expand_as(blocks))

    mixed_cells = mixed.nonzero()  # (M, 1 + dim)
    if len(mixed_cells):
        strides = torch.tensor([math.prod(lattice[a + 1:]) for a in range(dim)], device=logits.device)
        # (integer products written out: CUDA has no integer matmul)
        base = mixed_cells[:, 0] * math.prod(lattice) + (mixed_cells[:, 1:] * strides).sum(1)
        corner_offsets = (torch.tensor(corners, device=logits.device) * strides).sum(1)
        corner_points = corner_offsets[:, None] + base[None, :]  # (corners, M) flat lattice indices
        weights = _cell_weights(k, dim, logits.device)
        voxel_labels = _refine_cells(channels_last.view(-1, classes), corner_points, weights)
        cell_axes = [1 + 2 * a for a in range(dim)]
        by_cell = blocks.permute(0, *cell_axes, *(a + 1 for a in cell_axes))
        by_cell.index_put_(tuple(mixed_cells.t()), voxel_labels.t().reshape(-1, *(k,) * dim))
    if tuple(out.shape[1:]) != tuple(size):  # the last cells overhang the volume
        out = out[(slice(None), *(slice(0, s) for s in size))].contiguous()
    return out


def _refine_cells(logits: torch.Tensor, corner_points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Labels (k**dim, M) of the voxels of M mixed cells: the argmax of the logits interpolated
    from the cell's corners (``weights`` (k**dim, corners)); ``logits`` (P, I) are the lattice's,
    ``corner_points`` (corners, M) index them."""
    classes = logits.shape[1]
    corner_logits = logits[corner_points]  # (corners, M, I)
    voxel_logits = (weights @ corner_logits.view(len(corner_points), -1)).view(len(weights), -1, classes)
    return voxel_logits.argmax(-1)


def _cell_weights(k: int, dim: int, device) -> torch.Tensor:
    """(k**dim, 2**dim) multilinear weights of a cell's corners at its voxels (row-major order)."""
    t = torch.arange(k, device=device, dtype=torch.float32) / k
    per_axis = torch.stack([1 - t, t], dim=1)  # (k, 2): weights of the low and high corner
    weights = per_axis
    for _ in range(dim - 1):
        weights = (weights[:, None, :, None] * per_axis[None, :, None, :]).reshape(
            weights.shape[0] * k, weights.shape[1] * 2
        )
    return weights
