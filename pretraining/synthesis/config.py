"""The synthesis configuration: one dataclass whose fields are every random range, and two presets.

Sizes, scales and deformations are in voxels. A range ``(low, high)`` is drawn uniformly, once per
sample unless its field says otherwise; a range with ``low == high`` is a constant, and an
augmentation whose range is ``(0, 0)`` is skipped.

Presets (:meth:`SynthesisConfig.from_preset`):

``official``
    What the authors' released code does (github yweibs/RaSD): one deformation field per class,
    per-class means without per-class std, one global Gaussian noise scaled by the image maximum,
    min-max normalisation followed by a random gamma, no slice-thickness simulation.
``paper``
    The paper's Methods 4.1 as written: one deformation field shared by all classes, per-class
    Gaussian appearance N(mu_i, sigma_i^2), background noise, bias field, blur, and sub-sampling
    along Z that simulates thick slices; min-max normalised, no gamma. Where the paper gives no
    number (background noise, slice thickness), the ranges are ours and documented below.

Both presets take their noise scales from the largest spatial size ``S`` as the released code does
for ``S = 128`` (3D) and ``S = 512`` (2D): heatmap scales ``S/8, S/4``, deformation scales
``S/16, S/8, S/4`` with a per-scale std up to ``S/16`` voxels. The released code takes the number of
classes as ``S/16`` in 3D and ``S/32`` in 2D, i.e. 8 and 16 at its sizes; those are the defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rasd_hub.errors import RasdValueError

__all__ = ["SynthesisConfig", "PRESETS", "DEFAULT_SIZES"]

PRESETS = ("official", "paper")
# The sizes of the paper and of the released code; `rasd synth` and the benchmark default to them.
DEFAULT_SIZES = {2: 512, 3: 128}
DEFAULT_CLASSES = {2: 16, 3: 8}
MAX_CLASSES = 256  # labels are built and exported as uint8

Range = tuple[float, float]
_RUN_FIELDS = frozenset({"dim", "size", "num_classes"})  # a pre-training run sets these


@dataclass(frozen=True)
class SynthesisConfig:
    """Every knob of the synthesis engine. Build one with :meth:`from_preset` and adjust it with
    :func:`dataclasses.replace`; invalid values raise :class:`~rasd_hub.errors.RasdValueError`."""

    dim: int = 3
    """Number of spatial dimensions, 2 or 3."""
    size: tuple[int, ...] = (128, 128, 128)
    """Spatial size in voxels, one entry per axis; the last axis is Z (slice axis)."""
    num_classes: int = 8
    """Number of label classes I; labels take values in ``[0, I)``. Class 0 is not special."""

    # --- mask engine -----------------------------------------------------------------------------
    heatmap_scales: tuple[int, ...] = (16, 32)
    """Feature sizes of the per-class heatmap noise, in voxels: a scale ``s`` draws a Gaussian noise
    grid of ``size // s`` points per axis, linearly interpolated over the volume."""
    heatmap_std_range: Range = (0.0, 1.0)
    """Std of each heatmap noise grid; one draw per sample and scale, shared by all classes."""
    deformation_scales: tuple[int, ...] = (8, 16, 32)
    """Feature sizes of the deformation field's noise grids, in voxels (as ``heatmap_scales``)."""
    deformation_std_range: Range = (0.0, 8.0)
    """Std of each deformation noise grid in voxels, per axis component; one draw per sample and
    scale. ``(0, 0)`` turns deformation off."""
    deformation_per_class: bool = True
    """True: every class warps its heatmap with its own field (the released code); False: one
    field per sample, shared by all classes (the paper)."""
    released_warp_coordinates: bool = False
    """Reproduce the released warp's coordinate convention: it normalises voxel positions by
    ``size - 1`` but samples with ``align_corners=False``, which stretches positions by
    ``size / (size - 1)`` and shifts them by half a voxel, so the outermost voxels see half of the
    zero padding. Measurably more fragments at the borders; True in ``official`` only."""
    mask_lattice_spacing: int = 4
    """Speed/accuracy knob, not a random range: the warped heatmaps are evaluated exactly on a
    lattice of points this many voxels apart and linearly interpolated in between before the
    argmax (labels.py). 1 evaluates every voxel like the released code. The presets use 2 at
    their default sizes (a quarter of the finest deformation scale in 3D, a sixteenth in 2D):
    at 128^3 that keeps about 97 % of voxels identical and the surface-to-volume ratio 7-8 % lower (the
    finest slivers smooth out), at 512^2 99.6 % and 2 % lower (docs/benchmarks.md). On a GPU,
    1 is affordable."""

    # --- image engine ----------------------------------------------------------------------------
    class_mean_range: Range = (0.0, 1.0)
    """Mean intensity mu_i of each class; one draw per sample and class."""
    class_std_range: Range = (0.0, 0.0)
    """Std sigma_i of each class's Gaussian intensity noise; one draw per sample and class."""
    background_mean_range: Range = (0.0, 0.0)
    """Mean mu_b of the background noise added to every voxel (before the bias field)."""
    background_std_range: Range = (0.0, 0.0)
    """Std sigma_b of the background noise added to every voxel (before the bias field)."""
    bias_std_range: Range = (0.01, 0.1)
    """Std of the white noise behind the log bias field. As in the released code, the blurred field
    is rescaled so its maximum equals that of the white noise, then exponentiated."""
    bias_fwhm_range: Range = (16.0, 32.0)
    """FWHM in voxels of the Gaussian that smooths the log bias field; one draw per sample and axis."""
    noise_std_range: Range = (0.0, 0.0)
    """Std of one global Gaussian noise added after the bias field, as a fraction of the sample's
    maximum absolute intensity (the released code's noise)."""
    blur_sigma_range: Range = (0.0, 1.0)
    """Gaussian blur sigma in voxels; one draw per sample and axis. Zero-padded like the released
    code, so the outermost voxels darken slightly."""
    slice_thickness_range: Range = (1.0, 8.0)
    """Slice thickness along Z (last axis) in voxels, 3D only: the image keeps about
    ``size[-1] / thickness`` evenly spaced slices, each repeated over its slab (nearest-neighbour
    upsampling), so the image is constant within a slab while the label keeps full resolution."""
    slice_probability: float = 0.0
    """Probability that a sample gets thick slices (3D only)."""
    normalize: bool = True
    """Min-max normalise every sample to [0, 1] (before gamma)."""
    gamma_range: Range = (1.0, 1.0)
    """Exponent of a random gamma applied after normalisation; one draw per sample."""
    zscore: bool = False
    """Last, shift and scale every sample to zero mean and unit std: the footing of nnU-Net's
    z-score normalisation, so fine-tuning's mapping onto the weights' moments is the identity.
    Off in both presets (neither the paper nor the released code does it)."""

    @classmethod
    def from_preset(
        cls,
        name: str,
        dim: int = 3,
        size: int | tuple[int, ...] | list[int] | None = None,
        num_classes: int | None = None,
    ) -> "SynthesisConfig":
        """The ``paper`` or ``official`` preset for a given dimension, size and number of classes.

        ``size`` is one int (a square/cube) or one int per axis; defaults are 128^3 with 8 classes
        (3D) and 512^2 with 16 classes (2D), the sizes of the paper and the released code.
        """
        if name not in PRESETS:
            raise RasdValueError(f"unknown synthesis preset {name!r}: choose one of {', '.join(PRESETS)}")
        if dim not in (2, 3):
            raise RasdValueError(f"dim must be 2 or 3 (got {dim!r})")
        spatial = _as_size(DEFAULT_SIZES[dim] if size is None else size, dim)
        classes = DEFAULT_CLASSES[dim] if num_classes is None else num_classes
        reference = max(spatial)
        if reference < 16:
            raise RasdValueError(
                f"size {list(spatial)} is too small for the presets, whose finest noise scale is "
                f"1/16 of the largest axis: use a size of at least 16 voxels (e.g. 32 or 64)"
            )
        finest = reference // 16
        common = dict(
            dim=dim,
            size=spatial,
            num_classes=classes,
            heatmap_scales=(reference // 8, reference // 4),
            deformation_scales=(reference // 16, reference // 8, reference // 4),
            deformation_std_range=(0.0, float(reference // 16)),
            # A quarter (3D) or a sixteenth (2D) of the finest deformation scale: 2 voxels at
            # 128^3 and 2 pixels at 512^2; measured against the exact evaluation in
            # docs/benchmarks.md. 2D is cheap enough to afford the finer lattice.
            mask_lattice_spacing=max(1, finest // (4 if dim == 3 else 16)),
        )
        if name == "official":
            return cls(
                **common,
                deformation_per_class=True,
                released_warp_coordinates=True,
                noise_std_range=(0.05, 0.4),
                gamma_range=(0.5, 1.5),
                slice_probability=0.0,
            )
        return cls(
            **common,
            deformation_per_class=False,
            class_std_range=(0.0, 0.1),
            # The paper gives no numbers for the background noise and slice thickness: ours.
            background_mean_range=(0.0, 0.1),
            background_std_range=(0.0, 0.05),
            slice_thickness_range=(1.0, 8.0),
            slice_probability=1.0 if dim == 3 else 0.0,
        )

    def __post_init__(self):
        if self.dim not in (2, 3):
            raise RasdValueError(f"dim must be 2 or 3 (got {self.dim!r})")
        object.__setattr__(self, "size", _as_size(self.size, self.dim))
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= MAX_CLASSES:
            raise RasdValueError(
                f"num_classes must be an integer from 2 to {MAX_CLASSES} (got {self.num_classes!r}): "
                "RaSD needs at least two classes to draw boundaries between"
            )
        for name in ("heatmap_scales", "deformation_scales"):
            scales = tuple(getattr(self, name))
            if not scales or any(not isinstance(s, int) or s < 1 for s in scales):
                raise RasdValueError(f"{name} must be positive integers in voxels (got {scales!r})")
            object.__setattr__(self, name, scales)
            coarsest = max(scales)
            for axis, extent in enumerate(self.size):
                if extent // coarsest < 2:
                    raise RasdValueError(
                        f"size {extent} along axis {axis} is too small for the coarsest noise scale "
                        f"({coarsest} voxels in {name}): every axis needs at least {2 * coarsest} "
                        f"voxels; use a larger or less elongated size, or smaller {name}"
                    )
        if not isinstance(self.mask_lattice_spacing, int) or self.mask_lattice_spacing < 1:
            raise RasdValueError(
                f"mask_lattice_spacing must be a positive integer (got {self.mask_lattice_spacing!r})"
            )
        for f in dataclasses.fields(self):
            if f.name.endswith("_range"):
                object.__setattr__(self, f.name, _check_range(f.name, getattr(self, f.name)))
        if self.bias_fwhm_range[0] <= 0 and self.bias_std_range[1] > 0:
            raise RasdValueError(f"bias_fwhm_range must be positive (got {self.bias_fwhm_range})")
        if self.slice_thickness_range[0] < 1:
            raise RasdValueError(
                f"slice_thickness_range must start at 1 voxel or more (got {self.slice_thickness_range})"
            )
        if self.gamma_range[0] <= 0:
            raise RasdValueError(f"gamma_range must be positive (got {self.gamma_range})")
        if not 0.0 <= self.slice_probability <= 1.0:
            raise RasdValueError(f"slice_probability must be in [0, 1] (got {self.slice_probability})")

    def with_overrides(self, overrides: dict) -> "SynthesisConfig":
        """This config with some fields replaced (``rasd pretrain --synthesis-kwargs``): lists
        become tuples; unknown fields, wrong types and the fields a run sets itself (``dim``,
        ``size``, ``num_classes``) raise :class:`~rasd_hub.errors.RasdValueError`."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for key, value in overrides.items():
            if key in _RUN_FIELDS:
                raise RasdValueError(
                    f"synthesis field {key!r} is set by the run itself (its preset, --size, "
                    "--num-classes), not by --synthesis-kwargs"
                )
            if key not in fields:
                known = ", ".join(sorted(set(fields) - _RUN_FIELDS))
                raise RasdValueError(f"unknown synthesis field {key!r}; the fields are: {known}")
            if fields[key].type in ("bool", bool) and not isinstance(value, bool):
                raise RasdValueError(f"synthesis field {key!r} takes true or false (got {value!r})")
            changes[key] = tuple(value) if isinstance(value, list) else value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain Python values (lists for tuples), e.g. for provenance records and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _as_size(size, dim: int) -> tuple[int, ...]:
    values = (size,) * dim if isinstance(size, int) else tuple(size)
    if len(values) == 1:
        values = values * dim
    if len(values) != dim or any(not isinstance(v, int) or v < 1 for v in values):
        raise RasdValueError(
            f"size must be one positive integer or {dim} of them for {dim}D (got {list(values)})"
        )
    return values


def _check_range(name: str, value) -> Range:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RasdValueError(f"{name} must be a pair (low, high) of numbers (got {value!r})") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RasdValueError(f"{name} must be finite (got {value!r})")
    if low < 0:
        raise RasdValueError(f"{name} must not be negative (got {value!r}): use a range from 0 up")
    if high < low:
        raise RasdValueError(f"{name} must have low <= high (got {value!r}): swap the two numbers")
    return (low, high)

