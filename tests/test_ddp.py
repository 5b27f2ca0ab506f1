"""DDP on CPU: two gloo ranks launched by torchrun, with the tiny stand-in model of test_runner.

This file is also the worker script that torchrun starts (``python tests/test_ddp.py OUT STEPS``).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def worker(out: Path, steps: int, resume: bool) -> None:
    """One rank: train the tiny model with DDP, then dump what the test checks."""
    torch.set_num_threads(1)  # two ranks share two cores
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    import pretraining.runner as runner
    from pretraining.config import TrainConfig
    from test_runner import TinyNet, TinyStream

    rank = int(__import__("os").environ["RANK"])
    built = {}

    def build_model(config):
        built["model"] = TinyNet(config.spatial_dims)
        return built["model"]

    def build_source(config, r, batch, device):
        stream = TinyStream(config, r, batch, device)
        first = next(TinyStream(config, r, batch, device))  # what this rank trains on first
        torch.save({"image": first[0], "batch": batch}, out / f"first_batch_rank{r}.pt")
        return stream

    original_save = runner.save_checkpoint

    def recording_save(state, directory, step, keep=0):
        with open(out / f"saved_by_rank{dist.get_rank()}.txt", "a") as fh:
            fh.write(f"{step}\n")
        return original_save(state, directory, step, keep)

    runner.save_checkpoint = recording_save
    config = TrainConfig.from_preset(
        "rasd2d_small", size=16, steps=steps, checkpoint_every=2, log_every=1, out_dir=str(out),
        export=False, device="cpu", lr=1e-2, batch_size=4, keep_checkpoints=0, resume=resume,
        preview=False,
    )
    result = runner.run_pretraining(config, build_model, build_source, progress=False)
    torch.save(built["model"].state_dict(), out / f"params_rank{rank}.pt")
    if rank == 0:
        (out / "result.txt").write_text(f"{result.step} {result.resumed_from}")


def launch(out: Path, steps: int, resume: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(out), str(steps)] + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_together_and_resume_under_torchrun(tmp_path):
    from pretraining.checkpoint import list_checkpoints, load_checkpoint

    straight = tmp_path / "straight"
    launch(straight, steps=4)
    p0 = torch.load(straight / "params_rank0.pt")
    p1 = torch.load(straight / "params_rank1.pt")
    assert all(torch.equal(p0[k], p1[k]) for k in p0), "ranks diverged"
    b0 = torch.load(straight / "first_batch_rank0.pt")
    b1 = torch.load(straight / "first_batch_rank1.pt")
    assert b0["batch"] == b1["batch"] == 2  # global batch 4 split across 2 ranks
    assert not torch.equal(b0["image"], b1["image"]), "ranks synthesised the same batch"
    # only rank 0 writes checkpoints; they hold both ranks' RNG and stream states
    assert (straight / "saved_by_rank0.txt").read_text().split() == ["2", "4"]
    assert not (straight / "saved_by_rank1.txt").exists()
    ckpts = list_checkpoints(straight / "checkpoints")
    assert [s for s, _ in ckpts] == [4, 2]
    state = load_checkpoint(ckpts[0][1])
    assert state["rng"]["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    assert state["provenance"]["batch_size"] == 4
    assert all(torch.equal(state["model"][k], p0[k]) for k in p0)

    # resume under torchrun from the step-2 checkpoint: same weights as the straight run
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    step2 = dict(ckpts)[2]
    (resumed / "checkpoints" / step2.name).write_bytes(step2.read_bytes())
    launch(resumed, steps=4, resume=True)
    assert (resumed / "result.txt").read_text() == "4 2"
    r0 = torch.load(resumed / "params_rank0.pt")
    assert all(torch.equal(r0[k], p0[k]) for k in p0), "resume under torchrun is not exact"


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv[3:])
