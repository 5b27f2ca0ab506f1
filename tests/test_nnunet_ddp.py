"""``nnUNetv2_train -num_gpus N``: every rank must start from the same weights and stay equal.

nnU-Net's own DDP path needs CUDA (it puts each rank on cuda:RANK), so the mechanism is tested on
the CPU with two gloo processes: each rank builds the plans' network from its own, differently
seeded RNG (as nnU-Net's unseeded ranks do), DDP wraps it, and RaSDTrainer's own weight-loading
method runs on it. Then every rank trains a few steps on different data. Before the fix each rank
copied in a head initialised from its own RNG after the DDP wrap, so the heads differed for the
whole run and only rank 0's was saved.
"""

from __future__ import annotations

import os
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ARCH = {"rasd_architecture": "rasd2d_small",
        "rasd_model_args": {"spatial_dims": 2, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                            "num_res_units": 2, "act": "relu", "norm": "instance", "dropout": 0.0,
                            "head_channels": 32},
        "input_scale": [0.2104], "input_shift": [0.5238]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, plans: dict, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from nnunet_plugin.network import RaSDNetwork
    from nnunet_plugin.trainers import RaSDTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # ranks disagree on every random draw, like unseeded processes
    network = RaSDNetwork(1, 3, **ARCH)
    ddp = DistributedDataParallel(network)
    # the trainer's own method, on a stand-in holding what it reads (the DDP path needs CUDA)
    trainer = types.SimpleNamespace(
        plans_manager=types.SimpleNamespace(plans=plans),
        configuration_manager=types.SimpleNamespace(network_arch_init_kwargs=ARCH,
                                                    normalization_schemes=["ZScoreNormalization"]),
        label_manager=types.SimpleNamespace(num_segmentation_heads=3), num_input_channels=1,
        is_ddp=True, print_to_log_file=lambda *a, **k: None, _bare_network=lambda: network)
    RaSDTrainer._load_pretrained_weights(trainer)
    optimiser = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    for step in range(2):
        x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(10 * rank + step))
        optimiser.zero_grad()
        ddp(x).square().mean().backward()
        optimiser.step()
    state = [t.clone() for t in network.state_dict().values() if isinstance(t, torch.Tensor)]
    gathered = [None] * world
    dist.all_gather_object(gathered, state)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_starts_from_and_keeps_the_same_weights(tmp_path):
    from nnunet_plugin.pretrained import load_weights

    weights = load_weights("rasd2d_small", 1, 3).identity
    plans = {"rasd": {"pretrained": weights}}
    out = tmp_path / "states.pt"
    mp.spawn(_rank, args=(2, _free_port(), plans, str(out)), nprocs=2, join=True)
    rank0, rank1 = torch.load(out, weights_only=True)
    assert len(rank0) == len(rank1) > 0
    differ = [i for i, (a, b) in enumerate(zip(rank0, rank1)) if not torch.equal(a, b)]
    assert differ == [], f"{len(differ)} of {len(rank0)} tensors differ between ranks"
