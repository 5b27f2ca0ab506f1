"""Image engine: intensities from labels, then bias field, noise, blur, thick slices, normalisation.

Order (each step skipped when its range is (0, 0) or its flag is off):
1. per-class Gaussian appearance N(mu_i, sigma_i^2) and background noise N(mu_b, sigma_b^2);
2. multiplicative bias field;
3. global Gaussian noise scaled by the sample's maximum (the released code's noise);
4. Gaussian blur (zero-padded, per-axis sigma);
5. thick slices along Z (3D);
6. min-max normalisation to [0, 1], then gamma.
"""

from __future__ import annotations

import math

import torch

from .config import SynthesisConfig
from .fields import apply_separable, gaussian_blur_matrices, interpolation_matrix, uniform

__all__ = ["draw_images"]

FWHM_PER_SIGMA = 2.355  # the released code's conversion


def draw_images(config: SynthesisConfig, label: torch.Tensor, generator, device) -> torch.Tensor:
    """Images (B, 1, *size) float32 for a batch of label maps (B, *size) int64."""
    batch, classes, dim = label.shape[0], config.num_classes, config.dim
    per_sample = (batch, *(1,) * dim)
    flat_label = label.view(batch, -1)

    def lookup(values):  # (B, I) per-class values -> (B, *size)
        return values.gather(1, flat_label).view(label.shape)

    means = uniform(config.class_mean_range, (batch, classes), generator, device)
    image = lookup(means)
    if config.class_std_range[1] > 0:
        stds = uniform(config.class_std_range, (batch, classes), generator, device)
        image.addcmul_(lookup(stds), _randn_like(image, generator))
    if config.background_mean_range[1] > 0 or config.background_std_range[1] > 0:
        mean_b = uniform(config.background_mean_range, (batch,), generator, device).view(per_sample)
        std_b = uniform(config.background_std_range, (batch,), generator, device).view(per_sample)
        image.addcmul_(_randn_like(image, generator), std_b).add_(mean_b)
    if config.bias_std_range[1] > 0:
        image.mul_(_bias_field(config, batch, generator, device))
    if config.noise_std_range[1] > 0:
        fraction = uniform(config.noise_std_range, (batch,), generator, device)
        low, high = image.flatten(1).aminmax(dim=1)
        peak = torch.maximum(-low, high)  # max |image|, in one pass
        image.addcmul_(_randn_like(image, generator), (fraction * peak).view(per_sample))
    if config.blur_sigma_range[1] > 0:
        low, high = config.blur_sigma_range
        blurs = [
            gaussian_blur_matrices(uniform((low, high), (batch,), generator, device), extent, high)
            for extent in config.size
        ]
        image = apply_separable(image, blurs)
    if dim == 3 and config.slice_probability > 0:
        image = _thick_slices(config, image, generator)
    if config.normalize:
        low, high = image.flatten(1).aminmax(dim=1)
        image.sub_(low.view(per_sample)).div_((high - low).view(per_sample) + 1e-6)
    if config.gamma_range != (1.0, 1.0):
        image.pow_(uniform(config.gamma_range, (batch,), generator, device).view(per_sample))
    if config.zscore:
        std, mean = torch.std_mean(image.flatten(1), dim=1)
        image.sub_(mean.view(per_sample)).div_(std.view(per_sample) + 1e-6)
    return image.unsqueeze(1)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.empty_like(x).normal_(generator=generator)


def _bias_field(config: SynthesisConfig, batch: int, generator, device) -> torch.Tensor:
    """exp(smooth noise), (B, *size), as the released code draws it.

    Released: white noise N(0, s^2) at every voxel, blurred per axis with sigma = FWHM / 2.355
    (zero padding), rescaled so its maximum equals the white noise's maximum, exponentiated.
    The blurred field is smooth at the scale of sigma (>= 6.8 voxels by default), so it is drawn
    on a grid about sigma/2 voxels apart with the blur rescaled to that grid (the same correlation,
    same border fade), exponentiated there and linearly interpolated to every voxel. Only the
    white noise's maximum needs the full size: it is drawn from its exact distribution
    (the maximum of n standard normals is Phi^-1(U^(1/n))).
    """
    dim, size = config.dim, config.size
    sigma_low, sigma_high = (f / FWHM_PER_SIGMA for f in config.bias_fwhm_range)
    spacing = max(1, int(sigma_low // 2))
    points = [torch.linspace(0, s - 1, math.ceil((s - 1) / spacing) + 1, device=device) for s in size]
    field = torch.randn(batch, *map(len, points), generator=generator, device=device)
    blurs = []
    for extent, coords in zip(size, points):
        step = (extent - 1) / max(len(coords) - 1, 1)  # about `spacing` voxels
        sigma = uniform((sigma_low, sigma_high), (batch,), generator, device)
        blurs.append(gaussian_blur_matrices(sigma / step, len(coords), sigma_high / step))
    field = apply_separable(field, blurs)

    std = uniform(config.bias_std_range, (batch,), generator, device)
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    white_max = -torch.special.ndtri(-torch.expm1(torch.log(u) / math.prod(size)))
    # The released rescaling divides by the blurred field's maximum, which is positive and of the
    # order of max |field| at the usual sizes (hundreds of independent blobs) but can be near 0 or
    # negative when a small volume holds only a few, and exp then overflows (NaN images after
    # normalisation). Flooring it at a tenth of max |field| bounds the exponent and changes nothing
    # at the default sizes (0 of 300 fields at 128^3, 0 of 2000 at 512^2; 0.6 % of 2000 at 64^2).
    flat = field.flatten(1)
    peak = torch.maximum(flat.amax(1), 0.1 * flat.abs().amax(1))
    scale = (std * white_max.float()) / (peak + 1e-6)
    bias = torch.exp(field * scale.view(batch, *(1,) * dim))
    to_voxels = [interpolation_matrix(len(c), torch.arange(s, device=device), s) for c, s in zip(points, size)]
    return apply_separable(bias, to_voxels)


def _thick_slices(config: SynthesisConfig, image: torch.Tensor, generator) -> torch.Tensor:
    """Keeps about depth/thickness evenly spaced Z slices and repeats each over its slab.

    The slice indices follow the released code's ``subsample_axis``: kept slices at
    round(linspace(0, depth - 1, n)), each voxel taking the nearest kept slice.
    """
    batch, depth, device = image.shape[0], image.shape[-1], image.device
    thickness = uniform(config.slice_thickness_range, (batch,), generator, device)
    applies = torch.rand(batch, generator=generator, device=device) < config.slice_probability
    kept = torch.clamp((depth / thickness + 0.5).floor(), 2, depth)
    kept = torch.where(applies, kept, torch.full_like(kept, depth))[:, None]  # (B, 1)
    z = torch.arange(depth, device=device, dtype=torch.float32)[None, :]
    nearest_kept = (z * (kept - 1) / (depth - 1) + 0.5).floor()  # which kept slice, (B, depth)
    source = (nearest_kept * (depth - 1) / (kept - 1) + 0.5).floor().long()  # its Z index
    index = source.view(batch, *(1,) * (image.dim() - 2), depth).expand_as(image)
    return torch.gather(image, -1, index)
