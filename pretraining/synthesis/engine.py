"""``synthesize``: one batch of synthetic image/label pairs on a chosen device."""

from __future__ import annotations

import torch

from rasd_hub._device import resolve_device as resolve_project_device
from rasd_hub.errors import RasdValueError

from .config import SynthesisConfig
from .images import draw_images
from .labels import draw_labels

__all__ = ["synthesize", "resolve_device"]


def resolve_device(device: str | torch.device | None, generator: torch.Generator | None = None) -> torch.device:
    """The device to generate on: ``device`` if given, else the generator's, else the CPU.

    Raises :class:`~rasd_hub.errors.RasdValueError` for an unknown or unavailable device, or a
    generator that lives on another device.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    resolved = resolve_project_device(device)
    if generator is not None and _normalise(generator.device) != resolved:
        raise RasdValueError(
            f"the generator lives on {generator.device} but the batch is asked for on {resolved}: "
            f"create it with torch.Generator(device={str(resolved)!r})"
        )
    return resolved


def _normalise(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@torch.no_grad()
def synthesize(
    config: SynthesisConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: image float32 ``(B, 1, *size)`` and label int64 ``(B, *size)`` in ``[0, I)``.

    Every random draw comes from ``generator`` (torch's default generator of the device if None),
    so the same generator state and config give the same batch on the same device. All work is
    batched tensor operations on ``device`` (default: the generator's device, else the CPU).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RasdValueError(f"batch_size must be a positive integer (got {batch_size!r})")
    resolved = resolve_device(device, generator)
    label = draw_labels(config, batch_size, generator, resolved)
    image = draw_images(config, label, generator, resolved)
    return image, label
