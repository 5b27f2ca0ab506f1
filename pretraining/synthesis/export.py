"""Writing synthetic pairs to disk (NIfTI for 3D, PNG for 2D) and a preview grid to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rasd_hub._io import atomic_path

__all__ = ["write_pair", "preview_grid", "PALETTE"]

# Distinct colours for labels (Tableau 20); more classes cycle through them.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
    (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
    (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)
PANEL = 192  # preview panel height in pixels


def write_pair(image: torch.Tensor, label: torch.Tensor, directory: Path, stem: str) -> list[Path]:
    """Writes one sample (image (1, *size), label (*size)); returns the files written.

    3D: ``STEM_image.nii.gz`` (float32) and ``STEM_label.nii.gz`` (uint8), identity affine
    (1 mm voxels). 2D: ``STEM_image.png`` (8-bit grey) and ``STEM_label.png`` (8-bit class indices).
    Each file is written atomically (``rasd_hub._io.atomic_path``: never a truncated file under
    its name; the temporary name keeps the extension the writers choose the format by).
    """
    array = image[0].detach().cpu().numpy().astype(np.float32)
    labels = label.detach().cpu().numpy().astype(np.uint8)
    if array.ndim == 3:
        import nibabel as nib

        paths = [directory / f"{stem}_image.nii.gz", directory / f"{stem}_label.nii.gz"]
        for path, data in zip(paths, (array, labels)):
            with atomic_path(path) as tmp:
                nib.save(nib.Nifti1Image(data, np.eye(4)), tmp)
        return paths
    from PIL import Image

    paths = [directory / f"{stem}_image.png", directory / f"{stem}_label.png"]
    for path, data in zip(paths, (_to_grey(array), labels)):  # labels: uint8 -> 8-bit grey
        with atomic_path(path) as tmp:
            Image.fromarray(data).save(tmp)
    return paths


def preview_grid(images: torch.Tensor, labels: torch.Tensor, max_samples: int = 6):
    """A PIL image: one row per sample, image next to its colour-coded label.

    3D samples show two orthogonal mid planes (axial: middle Z slice; coronal: middle Y slice).
    """
    from PIL import Image, ImageDraw

    images = images[:max_samples, 0].detach().cpu().float().numpy()
    labels = labels[:max_samples].detach().cpu().numpy()
    if images.ndim == 4:
        planes = [("axial (mid Z)", lambda a: a[:, :, a.shape[2] // 2]),
                  ("coronal (mid Y)", lambda a: a[:, a.shape[1] // 2, :])]
    else:
        planes = [("", lambda a: a)]
    rows = []
    for image, label in zip(images, labels):
        panels = []
        for _, cut in planes:
            panels.append(_resize(Image.fromarray(_to_grey(cut(image))), Image.BILINEAR))
            panels.append(_resize(Image.fromarray(PALETTE[cut(label) % len(PALETTE)]), Image.NEAREST))
        rows.append(panels)
    gap, header = 4, 18
    widths = [p.width for p in rows[0]]
    canvas = Image.new("RGB", (sum(widths) + gap * (len(widths) + 1),
                               header + (PANEL + gap) * len(rows) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    titles = [f"{kind} {name}".strip() for name, _ in planes for kind in ("image", "label")]
    for title, width in zip(titles, widths):
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
        x += width + gap
    for r, panels in enumerate(rows):
        x, y = gap, header + gap + r * (PANEL + gap)
        for panel in panels:
            canvas.paste(panel.convert("RGB"), (x, y))
            x += panel.width + gap
    return canvas


def _to_grey(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.round(scaled * 255).astype(np.uint8)


def _resize(panel, resample):
    width = max(1, round(panel.width * PANEL / panel.height))
    return panel.resize((width, PANEL), resample)
