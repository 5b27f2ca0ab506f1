"""``synthesize``: one batch of synthetic image/label pairs on a chosen device."""

from __future__ import annotations

import torch

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
        resolved = generator.device if generator is not None else torch.device("cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise RasdValueError(f"unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RasdValueError(f"device {str(device)!r} was asked for but CUDA is not available here: use 'cpu'")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        if resolved.index >= torch.cuda.device_count():
            raise RasdValueError(
                f"device {str(resolved)!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif resolved.type != "cpu":
        raise RasdValueError(f"unsupported device {str(resolved)!r}: use 'cpu' or 'cuda'")
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
