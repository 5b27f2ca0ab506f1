"""BENCHMARK ONLY: a faithful per-sample re-implementation of the released RaSD synthesis.

Not part of the library (nothing in ``pretraining.synthesis`` imports it). ``rasd bench synth``
times it side by side with the engine, and the tests compare the statistics of the two. It lives
in the installed package only so that the benchmark command can run it.

It does what the released code (github yweibs/RaSD, ``gen_lab.py`` / ``gen_img.py``) does for one
sample, at full resolution, with the class axis as the batch axis:

* heatmaps: noise grids of ``S // (S/8)`` and ``S // (S/4)`` points, std ~ U(0, 1) per scale,
  upsampled (align_corners=True) and summed;
* deformation: one field per class, grids of 16, 8, 4 points (at S = 128), std ~ U(0, S/16) per
  scale, upsampled and summed; warp with the released spatial transformer (voxel grid + flow,
  normalised by ``size - 1`` but sampled with ``align_corners=False``, zero padding); argmax;
* image: class means ~ U(0, 1); bias field = white noise (std ~ U(0.01, 0.1)) blurred with an
  83-tap zero-padded Gaussian (FWHM ~ U(16, 32) per axis), rescaled to the noise's maximum,
  exponentiated; global noise with sd ~ U(0.05, 0.4) x max|image|; 7-tap blur with sigma ~ U(0, 1)
  per axis; min-max normalisation; gamma ~ U(0.5, 1.5).

The released code draws from Python's, NumPy's and torch's global generators; here every draw
comes from one torch generator, so runs are reproducible. Only the ``official`` preset exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reference_sample"]

EPS = torch.finfo(torch.float32).eps


def _uniform(low, high, generator, device) -> float:
    return float(torch.rand((), generator=generator, device=device) * (high - low) + low)


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


def _perlin(shape, scales, max_std, generator, device) -> torch.Tensor:
    out = torch.zeros(shape, device=device)
    for scale in scales:
        std = _uniform(0.0, max_std, generator, device)
        grid = torch.randn(*shape[:2], *(s // scale for s in shape[2:]), generator=generator, device=device) * std
        out += _upsample(grid, shape[2:])
    return out


def _warp(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    size = flow.shape[2:]
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, device=flow.device) for s in size), indexing="ij"))
    locations = grid[None].float() + flow
    for axis, extent in enumerate(size):
        locations[:, axis] = 2 * (locations[:, axis] / (extent - 1) - 0.5)
    locations = locations.movedim(1, -1).flip(-1)
    return F.grid_sample(src, locations, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian_kernel(sigma: float, max_sigma: float, device) -> torch.Tensor:
    radius = int(round(max(max_sigma, EPS) * 3))
    taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * taps**2 / max(sigma, EPS) ** 2)
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, sigmas, max_sigma, device) -> torch.Tensor:
    dim = x.dim() - 2
    conv = F.conv3d if dim == 3 else F.conv2d
    for axis, sigma in enumerate(sigmas):
        kernel = _gaussian_kernel(sigma, max_sigma, device)
        shape = [1] * dim
        shape[axis] = -1
        padding = [0] * dim
        padding[axis] = len(kernel) // 2
        x = conv(x, kernel.view(1, 1, *shape), padding=tuple(padding))
    return x


def reference_sample(size, num_classes: int, generator: torch.Generator, device="cpu"):
    """One sample like the released code: image (1, 1, *size) float32, label (1, *size) int64."""
    size = tuple(size)
    dim, base = len(size), size[0]
    heat = _perlin((num_classes, 1, *size), (base // 8, base // 4), 1.0, generator, device)
    flow = _perlin((num_classes, dim, *size), (base // 16, base // 8, base // 4), base // 16, generator, device)
    label = _warp(heat, flow).argmax(0)  # (1, *size)

    means = torch.rand(num_classes, generator=generator, device=device)
    image = means[label][None]  # (1, 1, *size)

    bias_std = _uniform(0.01, 0.1, generator, device)
    noise = torch.randn(image.shape, generator=generator, device=device) * bias_std
    sigmas = [_uniform(16 / 2.355, 32 / 2.355, generator, device) for _ in range(dim)]
    blurred = _blur(noise, sigmas, 32 / 2.355, device)
    image = image * torch.exp(blurred * noise.max() / (blurred.max() + 1e-6))

    noise_sd = _uniform(0.05, 0.4, generator, device) * image.abs().max()
    image = image + torch.randn(image.shape, generator=generator, device=device) * noise_sd
    image = _blur(image, [_uniform(EPS, 1.0, generator, device) for _ in range(dim)], 1.0, device)

    image = (image - image.min()) / (image.max() - image.min() + 1e-6)
    image = image ** _uniform(0.5, 1.5, generator, device)
    return image, label
