"""Preview PNGs: synthetic images, their label maps and the model's prototype assignments.

One row per sample (at most four): image | label map | prototype assignment (argmax of the
pixel-prototype similarity). 3D volumes show their middle axial slice. At the start of a run the
assignment column is noise-like; after a useful run it follows the label regions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pretraining.pdl import prototype_assignments
from rasd_hub._io import atomic_path

__all__ = ["save_preview", "save_prototype_preview", "PALETTE"]

# distinct colours for up to 20 classes (cycled beyond)
PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128],
], dtype=np.uint8)


def _middle_slice(t: torch.Tensor) -> np.ndarray:
    """(H, W) or (D, H, W) -> (H, W) numpy."""
    t = t.detach().float().cpu() if t.is_floating_point() else t.detach().cpu()
    if t.dim() == 3:
        t = t[t.shape[0] // 2]
    return t.numpy()


def _gray(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def _colour(labels: np.ndarray) -> np.ndarray:
    return PALETTE[labels.astype(np.int64) % len(PALETTE)]


def save_preview(
    path: Path,
    image: torch.Tensor,
    label: torch.Tensor,
    assignment: torch.Tensor | None = None,
    max_samples: int = 4,
    min_tile: int = 128,
) -> Path:
    """Write the preview grid for ``image`` (B, 1, *spatial), ``label`` and optionally
    ``assignment`` (both (B, *spatial)) to ``path`` and return the path."""
    from PIL import Image, ImageDraw

    rows = []
    for b in range(min(max_samples, image.shape[0])):
        tiles = [_gray(_middle_slice(image[b, 0])), _colour(_middle_slice(label[b]))]
        if assignment is not None:
            tiles.append(_colour(_middle_slice(assignment[b])))
        gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        row = tiles[0]
        for tile in tiles[1:]:
            row = np.concatenate([row, gap, tile], axis=1)
        rows.append(row)
    grid = np.concatenate(
        [np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)], axis=0) for r in rows],
        axis=0,
    )
    # small images (32^2, 64^2) are scaled up with nearest neighbours so the classes stay crisp
    scale = max(1, -(-min_tile // image.shape[-1]))
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    titles = ["image", "label map"] + (["prototype assignment"] if assignment is not None else [])
    header = 14
    canvas = Image.new("RGB", (picture.width, picture.height + header), (255, 255, 255))
    canvas.paste(picture, (0, header))
    column = (image.shape[-1] + 2) * scale
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((i * column + 2, 1), title, fill=(0, 0, 0))
    picture = canvas
    path = Path(path)
    with atomic_path(path) as tmp:  # a run killed while saving keeps the previous picture
        picture.save(tmp, format="PNG")
    return path


def save_prototype_preview(model, image: torch.Tensor, label: torch.Tensor, config, path: Path,
                           autocast) -> Path:
    """The preview of the model's prototype assignments on (at most four of) ``image`` / ``label``.
    Uses no randomness and changes no state (the training mode is restored), so it does not
    disturb exact resume. ``autocast``: a callable giving the run's autocast context."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        features = model(image[:4])
    model.train(was_training)
    assigned = prototype_assignments(features, label[:4], config.num_classes, config.pdl.normalize)
    return save_preview(path, image[:4], label[:4], assigned)
