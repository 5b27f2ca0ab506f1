"""PNG panels of the benchmark: predictions next to the reference, and probe feature colourings.

Each panel is one test case: titled columns, the input in grey and label maps as colour overlays
on it. 3D cases show the axial slice with the most reference foreground. Display only: nothing
here feeds a metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["display_slice", "write_prediction_panels", "write_probe_panels", "safe_name"]

# background transparent, then distinct colours per foreground class
_PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40],
                     [200, 80, 220], [40, 210, 220], [250, 140, 40]], np.float32)
_TITLE_HEIGHT = 14
_MIN_TILE = 128  # pixels: narrower tiles are enlarged by a whole factor


def safe_name(text: str) -> str:
    """``text`` as a file-name fragment (paths and tags become letters, digits, ``-_.``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("._") or "x"


def display_slice(reference: np.ndarray) -> tuple[int, ...]:
    """Index prefix that turns a (z, y, x) volume into its slice with the most foreground
    (empty for 2D arrays)."""
    if reference.ndim == 2:
        return ()
    return (int((reference > 0).reshape(reference.shape[0], -1).sum(1).argmax()),)


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image - lo) / max(float(hi - lo), 1e-8), 0, 1)
    return np.repeat(grey[..., None] * 255, 3, axis=2).astype(np.float32)


def _overlay(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    colours = _PALETTE[np.asarray(labels) % len(_PALETTE)]
    mask = (np.asarray(labels) > 0)[..., None]
    return np.where(mask, (1 - alpha) * grey + alpha * colours, grey)


def _fit(title: str, suffix: str, width: int) -> str:
    """``title + suffix`` cut to about ``width`` pixels of the default font, keeping ``suffix``."""
    room = max(4, width // 6 - len(suffix))
    return (title if len(title) <= room else title[: room - 1] + "~") + suffix


def _titled_row(tiles: Sequence[np.ndarray], titles: Sequence[str | tuple[str, str]],
                path: Path) -> None:
    """Tiles side by side under their titles; a ``(title, suffix)`` pair is cut in the title."""
    from PIL import Image, ImageDraw

    zoom = -(-_MIN_TILE // tiles[0].shape[1])  # small cases are enlarged (nearest) to be legible
    tiles = [t.repeat(zoom, axis=0).repeat(zoom, axis=1) for t in tiles]
    h, w = tiles[0].shape[:2]
    gap = 2
    canvas = Image.new("RGB", (len(tiles) * (w + gap) - gap, h + _TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, title) in enumerate(zip(tiles, titles)):
        canvas.paste(Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)),
                     (i * (w + gap), _TITLE_HEIGHT))
        name, suffix = (title, "") if isinstance(title, str) else title
        draw.text((i * (w + gap) + 2, 1), _fit(name, suffix, w), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_prediction_panels(out: str | Path, cases: Sequence, predictions: Mapping[str, Mapping],
                            titles: Mapping[str, str] | None = None,
                            scores: Mapping[str, Mapping[str, float]] | None = None) -> list[Path]:
    """input | reference | one column per init, one PNG per case that every init predicted.

    ``cases`` are :class:`~nnunet_plugin.evaluation.data.Case` objects (image, label);
    ``predictions`` maps init -> case id -> predicted label array; ``titles`` gives short column
    names per init (default: the init itself); ``scores`` (init -> case id -> Dice) adds the
    case's Dice to its column title.
    """
    out, titles, scores = Path(out), dict(titles or {}), dict(scores or {})
    written = []
    for case in cases:
        if not all(case.case_id in p for p in predictions.values()):
            continue
        where = display_slice(case.label)
        grey = _grey(case.image[0][where])
        tiles = [grey, _overlay(grey, case.label[where])]
        tiles += [_overlay(grey, p[case.case_id][where]) for p in predictions.values()]
        names = ["input", "reference"]
        for init in predictions:
            score = scores.get(init, {}).get(case.case_id)
            names.append((titles.get(init, init), "" if score is None else f" {score:.2f}"))
        path = out / f"{safe_name(case.case_id)}.png"
        _titled_row(tiles, names, path)
        written.append(path)
    return written


def write_probe_panels(out: str | Path, init: str, kept: Sequence[dict],
                       title: str | None = None) -> list[Path]:
    """input | reference | nearest-prototype prediction | PCA colouring of the embedding, one PNG
    per kept test case (:func:`~nnunet_plugin.evaluation.probe.prototype_probe`'s extras)."""
    from nnunet_plugin.evaluation.probe import pca_rgb

    out = Path(out)
    written = []
    for item in kept:
        case = item["case"]
        where = display_slice(case.label)
        grey = _grey(item["image"][0][where])
        embedding = item["embedding"][(slice(None),) + where]
        tiles = [grey, _overlay(grey, case.label[where]), _overlay(grey, item["prediction"][where]),
                 pca_rgb(embedding).astype(np.float32)]
        path = out / f"{safe_name(init)}__{safe_name(case.case_id)}.png"
        _titled_row(tiles, ["input", "reference", f"probe {title or init}", "PCA"], path)
        written.append(path)
    return written
