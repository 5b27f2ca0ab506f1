"""The one device resolver of the project (rasd_hub, pretraining, nnunet_plugin, ``rasd eval``).

``auto`` (or None) is this process's GPU if there is one, else the CPU; ``cuda`` without an index
is the local rank's GPU (``local_rank`` given) or the current one; a device that does not exist
here is an error saying what is available, never a silent fallback to another device.
"""

from __future__ import annotations

from rasd_hub.errors import RasdValueError

__all__ = ["resolve_device"]


def resolve_device(requested=None, *, local_rank: int | None = None):
    """A ``torch.device`` for ``requested`` (``"auto"``, None, ``"cpu"``, ``"cuda"``, ``"cuda:N"``
    or a ``torch.device``); see the module docstring."""
    import torch

    if requested is None or requested in ("auto", ""):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise RasdValueError(f"unknown device {requested!r}: use 'auto', 'cpu' or 'cuda' (or 'cuda:N')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RasdValueError(f"device {str(requested)!r} was asked for but CUDA is not available "
                                 "here: use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if device.index is None:
            index = local_rank % count if local_rank is not None else torch.cuda.current_device()
            device = torch.device("cuda", index)
        if device.index >= count:
            raise RasdValueError(f"device {str(device)!r} does not exist: this machine has {count} GPU(s)")
    elif device.type != "cpu":
        raise RasdValueError(f"unsupported device {str(device)!r}: use 'cpu' or 'cuda'")
    return device
