"""Process-group plumbing: one code path for a single process and for ``torchrun`` (DDP).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; when they
are present the runner joins the process group (NCCL on CUDA, gloo on CPU) and each rank trains on
its own device. Without them everything below degrades to no-ops.

Elastic restarts (``torchrun --max-restarts N``): the elastic agent keeps one TCPStore for the
whole job (shared with its rendezvous, ``TORCHELASTIC_USE_AGENT_STORE=True``) and its workers
write their process-group keys straight into it, without a per-restart prefix. Restarted workers
then read the dead workers' keys (their addresses) and fail or hang in ``init_process_group``
(pytorch/pytorch#135712; torch's opt-out is ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in the
*launcher's* environment). ``TORCHELASTIC_RESTART_COUNT`` cannot serve as a prefix: it counts
the local agent's restarts and differs between nodes. So under an agent store the ranks first
agree on a fresh key namespace for this attempt (:func:`_attempt_namespace`) and build the process
group inside it, with torch's own ``init_process_group``.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from pretraining.errors import PretrainingError
from rasd_hub._device import resolve_device as resolve_project_device

__all__ = ["DistContext", "init_distributed", "resolve_device"]


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU. ``cuda`` picks the local rank's GPU
    (rasd_hub's resolver, the project's only one)."""
    return resolve_project_device(requested, local_rank=local_rank)


@dataclass
class DistContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if it is True on any (e.g. a signal that reached only one rank)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def on_main(self, fn: Callable[[], Any], share: Callable[[Any], Any] | None = None) -> Any:
        """Run ``fn`` on rank 0 only (a file write, a decision); every rank waits for it. Rank 0
        gets ``fn``'s value, the others ``share(value)`` (None without ``share``). If ``fn``
        raises, every rank raises (the others a copy of rank 0's error) instead of waiting
        forever at the next collective."""
        if not self.distributed:
            return fn()
        if not self.is_main:
            kind, payload = self.broadcast_object(None)
            if kind == "error":
                raise payload
            return payload
        try:
            value = fn()
        except Exception as err:
            try:
                copy = pickle.loads(pickle.dumps(err))
            except Exception:  # an exception type that does not pickle: keep its message
                copy = PretrainingError(f"rank 0 failed: {type(err).__name__}: {err}")
            self.broadcast_object(("error", copy))
            raise
        self.broadcast_object(("ok", share(value) if share else None))
        return value

    def shutdown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group if launched by ``torchrun`` (or any launcher setting ``WORLD_SIZE``
    and ``RANK``); otherwise return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_PORT" in os.environ:
            kwargs.update(store=_attempt_store(rank, world_size), rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, **kwargs)
        initialized_here = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, device=dev, initialized_here=initialized_here)


_STORE_TIMEOUT = timedelta(minutes=30)  # torch's default process-group timeout
_TOKEN_KEY = "rasd/attempt/token"


def _attempt_store(rank: int, world_size: int, timeout: timedelta = _STORE_TIMEOUT):
    """A client of the elastic agent's store whose keys live in a namespace of this attempt."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"rasd/attempt/{_attempt_namespace(store, rank, world_size, timeout)}/",
                            store)


def _attempt_namespace(store, rank: int, world_size: int, timeout: timedelta) -> str:
    """A token all ranks of this attempt agree on and no earlier attempt used.

    Rank 0 publishes a fresh token; every other rank answers with a fresh nonce under the token it
    read and waits for rank 0's confirmation of that nonce. A rank that read a previous attempt's
    token gets no confirmation (that rank 0 is gone) and answers again as soon as the token
    changes, so stale keys can delay a rank but never put it in the wrong namespace.
    """
    if rank == 0:
        token = uuid.uuid4().hex
        store.set(_TOKEN_KEY, token)
        for other in range(1, world_size):
            nonce = store.get(f"rasd/attempt/{token}/ack/{other}").decode()
            store.set(f"rasd/attempt/{token}/go/{nonce}", "1")
        return token
    nonce = uuid.uuid4().hex
    deadline = time.monotonic() + timeout.total_seconds()
    token = None
    while True:
        current = store.get(_TOKEN_KEY).decode()  # waits for the first attempt's rank 0
        if current != token:
            token = current
            store.set(f"rasd/attempt/{token}/ack/{rank}", nonce)
        if store.check([f"rasd/attempt/{token}/go/{nonce}"]):
            return token
        if time.monotonic() > deadline:
            raise PretrainingError(
                f"rank {rank}: rank 0 of this torchrun attempt did not answer within "
                f"{timeout}; is every node's launcher running the same job?")
        time.sleep(0.02)
