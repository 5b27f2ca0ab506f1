"""DDP on CPU under torchrun, with the tiny stand-in model of test_runner: two gloo ranks on one
launcher, an elastic restart after a rank is killed, and two launchers as two "nodes".

This file is also the worker script that torchrun starts (``python tests/test_ddp.py OUT STEPS``).
Every comparison runs each rank with one thread: the thread count changes the rounding.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
#: kill -9 rank 1 when it draws this batch, in torchrun's first attempt only
KILL_VAR = "RASD_TEST_KILL_RANK1_AT_BATCH"
#: after a restart, rank 1 joins this many seconds after rank 0 (as a slower node would)
LATE_VAR = "RASD_TEST_RANK1_LATE_AFTER_RESTART"
LAUNCH_TIMEOUT = 150  # seconds per launch; a hang fails the test instead of eating CI


def worker(out: Path, steps: int, resume: bool) -> None:
    """One rank: train the tiny model with DDP, then dump what the tests check."""
    import faulthandler

    faulthandler.enable()  # a crash in C++ (e.g. SIGABRT) still shows where Python was
    torch.set_num_threads(1)
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    import pretraining.checkpoint as checkpoint
    import pretraining.run_state as run_state
    import pretraining.runner as runner
    from pretraining.config import TrainConfig
    from test_runner import TinyNet, TinyStream

    rank = int(os.environ["RANK"])
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    kill_at = 0 if restarted else int(os.environ.get(KILL_VAR, 0))
    if restarted and rank == 1:
        time.sleep(float(os.environ.get(LATE_VAR, 0)))
    built = {}

    def build_model(config):
        built["model"] = TinyNet(config.spatial_dims)
        return built["model"]

    def suicide(image, label):
        os.kill(os.getpid(), signal.SIGKILL)

    def build_source(config, r, batch, device):
        hooks = {kill_at: suicide} if kill_at and r == 1 else None
        stream = TinyStream(config, r, batch, device, hooks)
        first = next(TinyStream(config, r, batch, device))  # what this rank trains on first
        torch.save({"image": first[0], "batch": batch}, out / f"first_batch_rank{r}.pt")
        return stream

    def record(name, value):
        with open(out / f"{name}_by_rank{dist.get_rank()}.txt", "a") as fh:
            fh.write(f"{value}\n")

    # checkpoints are written and read by the runner's checkpoint part (pretraining.run_state)
    original_save, original_load = run_state.save_checkpoint, checkpoint.load_checkpoint

    def recording_save(state, directory, step, keep=0):
        record("saved", step)
        return original_save(state, directory, step, keep)

    def recording_load(path):
        record("loaded", Path(path).name)
        return original_load(path)

    run_state.save_checkpoint = recording_save
    run_state.load_checkpoint = checkpoint.load_checkpoint = recording_load
    config = TrainConfig.from_preset(
        "rasd2d_small", size=16, steps=steps, checkpoint_every=2, log_every=1, out_dir=str(out),
        export=False, device="cpu", lr=1e-2, batch_size=4, keep_checkpoints=0, resume=resume,
        preview=False,
    )
    result = runner.run_pretraining(config, build_model, build_source, progress=False)
    torch.save(built["model"].state_dict(), out / f"params_rank{rank}.pt")
    if rank == 0:
        (out / "result.txt").write_text(f"{result.step} {result.resumed_from}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(launcher_args: list[str], out: Path, steps: int, resume: bool, env=None):
    """A torchrun launcher (its own process group, so a hang can be killed as a whole)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher_args,
           str(Path(__file__).resolve()), str(out), str(steps)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def finish(procs) -> None:
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=LAUNCH_TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT} s (hang)")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]


def launch(out: Path, steps: int, resume: bool = False, extra=(), env=None) -> None:
    finish([start(["--standalone", "--nproc-per-node", "2", *extra], out, steps, resume, env)])


def params(out: Path, rank: int = 0):
    return torch.load(out / f"params_rank{rank}.pt")


def assert_same(a, b, what):
    assert all(torch.equal(a[k], b[k]) for k in a), what


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-rank run of 4 steps on one launcher: the reference."""
    out = tmp_path_factory.mktemp("straight")
    launch(out, steps=4)
    return out


@pytest.mark.timeout(400)
def test_two_gloo_ranks_train_together_and_resume_under_torchrun(straight, tmp_path):
    from pretraining.checkpoint import list_checkpoints, load_checkpoint

    p0, p1 = params(straight, 0), params(straight, 1)
    assert_same(p0, p1, "ranks diverged")
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
    assert_same(p0, state["model"], "checkpoint differs from the trained weights")

    # resume under torchrun from the step-2 checkpoint: same weights as the straight run
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    step2 = dict(ckpts)[2]
    (resumed / "checkpoints" / step2.name).write_bytes(step2.read_bytes())
    launch(resumed, steps=4, resume=True)
    assert (resumed / "result.txt").read_text() == "4 2"
    assert_same(params(resumed), p0, "resume under torchrun is not exact")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_elastic_restart_after_a_rank_is_killed_resumes_exactly(straight, tmp_path):
    """torchrun --max-restarts 1, rank 1 killed with SIGKILL after the step-2 checkpoint: torchrun
    restarts both workers, which join a fresh process group, resume from step 2 and end with the
    uninterrupted run's weights. Rank 1 comes back 3 s late: before the fix rank 0 then read the
    dead rank 1's address from the agent's store and init_process_group failed (or hung)."""
    out = tmp_path / "elastic"
    launch(out, steps=4, resume=True, extra=["--max-restarts", "1"],
           env={KILL_VAR: "3", LATE_VAR: "3"})
    assert (out / "result.txt").read_text() == "4 2"
    assert (out / "saved_by_rank0.txt").read_text().split() == ["2", "4"]  # 2 before the kill
    assert_same(params(out, 0), params(straight, 0), "elastic restart is not exact")
    assert_same(params(out, 1), params(straight, 0), "ranks diverged after the restart")
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_launchers_as_two_nodes_train_stop_and_resume(straight, tmp_path):
    """Two torchrun launchers, one process each, meet through a c10d rendezvous on loopback (as
    two nodes would), train 2 steps, stop, and resume to 4: rank 0 alone writes checkpoints,
    every rank reads the one it resumes from, and the weights equal a one-launcher run's."""
    out = tmp_path / "nodes"

    def two_nodes(steps, resume):
        port = free_port()
        args = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"rasd-test-{port}",
                "--local-addr", "127.0.0.1", "--max-restarts", "0",
                "--rdzv-conf", "join_timeout=90"]
        finish([start(args, out, steps, resume) for _ in range(2)])

    two_nodes(steps=2, resume=False)
    assert (out / "saved_by_rank0.txt").read_text().split() == ["2"]
    two_nodes(steps=4, resume=True)
    assert (out / "result.txt").read_text() == "4 2"
    assert (out / "saved_by_rank0.txt").read_text().split() == ["2", "4"]
    assert not (out / "saved_by_rank1.txt").exists()
    for rank in (0, 1):
        assert (out / f"loaded_by_rank{rank}.txt").read_text().split() == ["step_0000002.pt"]
        assert_same(params(out, rank), params(straight, 0), f"rank {rank} differs from one launcher")


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv[3:])
