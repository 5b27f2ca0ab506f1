"""Fault injection for the pre-training runner: ``kill -9`` at random instants, and a full disk.

``rasd bench faults`` (and, with a handful of trials, ``tests/test_faults.py``) runs the real
command, ``python -m pretraining``, with tiny settings on the CPU:

1. a reference run, uninterrupted, that also records every write the atomic writer makes (and
   when), so that kills can be aimed at them;
2. each trial starts the same run afresh and kills it with SIGKILL, either at a random instant
   of its training (from the parent: uniform over the span of the reference's writes, counted
   from this run's first write) or inside a write (the child kills itself: half-way through a
   checkpoint's ``torch.save`` or the export's safetensors file, before the temporary file's
   fsync, before the rename, before the directory fsync, before / after a folder swap), or
   inside a write of ``--resume`` on the finished run (the export's folder swap);
3. then ``--resume`` runs to the end, and the trial survives only if it resumed from the newest
   checkpoint that was complete when the process died, and ended with the reference's weights
   (bitwise), metrics (step and loss of every step), start preview, checkpoints and export, with
   no temporary file left behind.

The full-disk check writes a checkpoint onto a disk that cannot take it (a file-size limit,
``RLIMIT_FSIZE``, and, where a user namespace can mount one, a small tmpfs): the run must stop
with a clear error, the previous checkpoint intact, and a later ``--resume`` with space must end
bit-identical to the reference. Every process runs with one thread (rounding follows the thread
count).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FaultRun", "Trial", "DiskFullResult", "Reference", "reference_run", "run_trial",
           "run_trials", "disk_full", "format_report", "configure_bench_faults"]

#: where a child kills itself (see _install_hooks)
PHASES = ("mid-write", "before-fsync", "before-rename", "before-dir-fsync", "before-swap",
          "after-swap")
_KILL_ENV = "RASD_FAULT_KILL"      # "INDEX": SIGKILL at the INDEX-th write event (0-based)
_RECORD_ENV = "RASD_FAULT_RECORD"  # file to append "time phase path" lines to


@dataclass(frozen=True)
class FaultRun:
    """The run every trial repeats: tiny preset settings, a few seconds of training on a CPU."""

    preset: str = "rasd2d_small"
    size: int = 32
    batch_size: int = 2
    steps: int = 24
    checkpoint_every: int = 4
    keep_checkpoints: int = 3
    seed: int = 0

    def argv(self, out: Path, steps: int | None = None, resume: bool = False) -> list[str]:
        return ["--preset", self.preset, "--size", str(self.size), "--batch-size",
                str(self.batch_size), "--steps", str(steps or self.steps), "--checkpoint-every",
                str(self.checkpoint_every), "--keep-checkpoints", str(self.keep_checkpoints),
                "--seed", str(self.seed), "--log-every", "1", "--device", "cpu", "--no-progress",
                "--out", str(out)] + (["--resume"] if resume else [])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (_KILL_ENV, _RECORD_ENV)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _child_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pretraining.faults", *args]


# ------------------------------------------------------------------------------- the child

def _install_hooks(kill_at: int | None, record: str | None) -> None:
    """Wrap the atomic writer's steps (rasd_hub._io) and the two serialisers so that every write
    event is counted, optionally recorded, and the ``kill_at``-th one ends the process."""
    import safetensors.torch
    import torch

    import rasd_hub._io as io

    count = [0]

    def event(phase: str, path: Any, before_kill=None) -> None:
        index = count[0]
        count[0] += 1
        if record:
            with open(record, "a") as fh:
                fh.write(f"{time.time():.6f} {phase} {Path(path).name}\n")
        if index == kill_at:
            if before_kill is not None:
                before_kill()
            os.kill(os.getpid(), signal.SIGKILL)

    def half(path) -> None:  # what a write interrupted half-way leaves
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)

    def being_written(path) -> bool:  # a temporary file, or a file in a folder being staged
        return isinstance(path, (str, os.PathLike)) and any(
            part.startswith(io.TEMP_PREFIX) for part in (Path(path).name, Path(path).parent.name))

    def serialiser(save):
        def wrapped(obj, path, *args, **kwargs):
            result = save(obj, path, *args, **kwargs)
            if being_written(path):
                event("mid-write", path, lambda: half(path))
            return result
        return wrapped

    torch.save = serialiser(torch.save)
    safetensors.torch.save_file = serialiser(safetensors.torch.save_file)

    fsync_file, fsync_dir, exchange = io._fsync_file, io.fsync_dir, io._exchange

    def fsync_file_hooked(path):
        event("before-fsync", path)
        fsync_file(path)
        event("before-rename", path)

    def fsync_dir_hooked(directory):
        event("before-dir-fsync", directory)
        fsync_dir(directory)

    def exchange_hooked(a, b):
        event("before-swap", b)
        done = exchange(a, b)
        event("after-swap", b)
        return done

    io._fsync_file, io.fsync_dir, io._exchange = fsync_file_hooked, fsync_dir_hooked, exchange_hooked


def _child(argv: list[str]) -> int:
    """``python -m pretraining.faults child PRETRAIN_ARGS...``: the pre-training command with the
    write hooks of the environment's kill / record settings."""
    kill = os.environ.get(_KILL_ENV)
    _install_hooks(int(kill) if kill else None, os.environ.get(_RECORD_ENV))
    from pretraining.__main__ import main

    return main(argv)


# ------------------------------------------------------------------------------- the parent

@dataclass
class Reference:
    """The uninterrupted run: what every trial must end with, and where its writes happen."""

    out: Path
    weights_sha256: str
    export_config: dict[str, Any]
    losses: list[tuple[int, float]]
    checkpoints: list[int]
    start_preview: bytes
    events: list[tuple[float, str, str]]  # (seconds after the launch, phase, file name)
    seconds: float
    rerun_events: list[tuple[float, str, str]] = field(default_factory=list)
    """the writes of ``--resume`` on the finished run (re-export: a folder swap)"""


def _read_events(path: Path, start: float) -> list[tuple[float, str, str]]:
    lines = [line.split(" ", 2) for line in path.read_text().splitlines()]
    return [(float(t) - start, phase, name) for t, phase, name in lines]


def _comparable_export(out: Path) -> dict[str, Any]:
    config = json.loads((out / "export" / "config.json").read_text())
    config["provenance"].pop("wall_seconds", None)  # training time: differs from run to run
    return config


def _losses(out: Path) -> list[tuple[int, float]]:
    from pretraining.metrics import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def _launch(args: list[str], env: dict[str, str], timeout: float,
            preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(_child_cmd(args), env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def reference_run(run: FaultRun, work: Path, timeout: float = 600) -> Reference:
    from rasd_hub._io import sha256_file
    from pretraining.checkpoint import list_checkpoints

    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    record = work / "reference-events.txt"
    record.unlink(missing_ok=True)
    started = time.time()
    proc = _launch(["child", *run.argv(out)], _env(**{_RECORD_ENV: str(record)}), timeout)
    seconds = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{proc.stderr[-3000:]}")
    events = _read_events(record, started)
    ref = Reference(out=out, weights_sha256=sha256_file(out / "export" / "model.safetensors"),
                    export_config=_comparable_export(out), losses=_losses(out),
                    checkpoints=[s for s, _ in list_checkpoints(out / "checkpoints")],
                    start_preview=(out / "preview_start.png").read_bytes(), events=events,
                    seconds=seconds)
    rerun = work / "reference-rerun"
    shutil.rmtree(rerun, ignore_errors=True)
    shutil.copytree(out, rerun)
    record.unlink()
    started = time.time()
    proc = _launch(["child", *run.argv(rerun, resume=True)], _env(**{_RECORD_ENV: str(record)}),
                   timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"--resume of the finished reference run failed:\n{proc.stderr[-3000:]}")
    ref.rerun_events = _read_events(record, started)
    shutil.rmtree(rerun)
    return ref


@dataclass
class Trial:
    index: int
    mode: str  # "instant" (killed from outside), "write" (inside a write of the run) or
    #            "rewrite" (inside a write of --resume on the finished run: the export's swap)
    target: str                 # seconds after start, or "PHASE FILE" of the write event
    killed: bool = False        # the process died of SIGKILL (not finished before the kill)
    complete_at_kill: int | None = None  # newest checkpoint that loaded right after the kill
    resumed_from: int | None = None
    survived: bool = False
    problems: list[str] = field(default_factory=list)


def _newest_loadable(out: Path) -> int | None:
    from pretraining.checkpoint import scan_checkpoints

    scan = scan_checkpoints(out / "checkpoints")
    return int(scan.state["step"]) if scan.state is not None else None


def _resume_steps(out: Path) -> list[int]:
    from pretraining.metrics import read_metrics

    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "resume"]


def _check(trial: Trial, ref: Reference, out: Path, resume: subprocess.CompletedProcess) -> None:
    from rasd_hub._io import sha256_file
    from pretraining.checkpoint import list_checkpoints

    problems = trial.problems
    if resume.returncode != 0:
        problems.append(f"--resume exited {resume.returncode}: {resume.stderr.strip()[-400:]}")
        return
    resumes = _resume_steps(out)
    trial.resumed_from = resumes[-1] if resumes else None
    if trial.resumed_from != trial.complete_at_kill:
        problems.append(f"resumed from {trial.resumed_from}, newest complete checkpoint was "
                        f"{trial.complete_at_kill}")
    if sha256_file(out / "export" / "model.safetensors") != ref.weights_sha256:
        problems.append("final weights differ from the uninterrupted run")
    if _comparable_export(out) != ref.export_config:
        problems.append("export config.json differs")
    if _losses(out) != ref.losses:
        problems.append("metrics (step, loss) differ")
    if [s for s, _ in list_checkpoints(out / "checkpoints")] != ref.checkpoints:
        problems.append(f"checkpoints {[s for s, _ in list_checkpoints(out / 'checkpoints')]}")
    if (out / "preview_start.png").read_bytes() != ref.start_preview:
        problems.append("preview_start.png differs")
    left = [p.name for d in (out, out / "checkpoints", out / "export") for p in d.iterdir()
            if p.name.startswith(".")]
    if left:
        problems.append(f"left behind: {left}")
    trial.survived = not problems


def run_trial(run: FaultRun, ref: Reference, work: Path, index: int, mode: str,
              rng: random.Random, event: int | None = None, timeout: float = 600) -> Trial:
    """One kill and one resume; see the module docstring. ``event`` picks the write to kill in
    (an index into the reference's events) instead of a random one."""
    out = work / f"trial{index:03d}"
    shutil.rmtree(out, ignore_errors=True)
    if mode in ("write", "rewrite"):
        events = ref.events if mode == "write" else ref.rerun_events
        if event is None:  # a phase uniformly, then one of its writes uniformly
            phase = rng.choice(sorted({p for _, p, _ in events}))
            event = rng.choice([i for i, (_, p, _) in enumerate(events) if p == phase])
        _, phase, name = events[event]
        trial = Trial(index, mode, f"{phase} {name} (write #{event})")
        if mode == "rewrite":
            shutil.copytree(ref.out, out)
        proc = _launch(["child", *run.argv(out, resume=mode == "rewrite")],
                       _env(**{_KILL_ENV: str(event)}), timeout)
        trial.killed = proc.returncode == -signal.SIGKILL
    else:
        # a random instant of the training part of the run: from its first write (the metrics
        # file, when training starts) to the reference's last write, plus a little
        window = (ref.events[-1][0] - ref.events[0][0]) * 1.05
        at = rng.uniform(0.0, window)
        trial = Trial(index, mode, f"{at:.2f} s after training started")
        child = subprocess.Popen(_child_cmd(["child", *run.argv(out)]), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while child.poll() is None and not (out / "metrics.jsonl").exists() \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            child.wait(timeout=at)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=timeout)
        trial.killed = child.returncode == -signal.SIGKILL
    trial.complete_at_kill = _newest_loadable(out) if (out / "checkpoints").is_dir() else None
    resume = _launch(["child", *run.argv(out, resume=True)], _env(), timeout)
    _check(trial, ref, out, resume)
    if trial.survived:
        shutil.rmtree(out, ignore_errors=True)
    return trial


def run_trials(trials: int, work: Path, seed: int = 0, run: FaultRun | None = None,
               progress: bool = False) -> tuple[Reference, list[Trial]]:
    """The reference run, then ``trials`` kills (in turn: a random instant, a random write of the
    run, a random write of a re-launch of the finished run), each followed by ``--resume``."""
    run = run or FaultRun()
    work.mkdir(parents=True, exist_ok=True)
    ref = reference_run(run, work)
    results = []
    for i in range(trials):
        rng = random.Random(seed * 100_003 + i)
        trial = run_trial(run, ref, work, i, ("instant", "write", "rewrite")[i % 3], rng)
        results.append(trial)
        if progress:
            verdict = "survived" if trial.survived else "LOST: " + "; ".join(trial.problems)
            print(f"trial {i + 1}/{trials}: {trial.mode} {trial.target}, killed={trial.killed}, "
                  f"newest complete {trial.complete_at_kill}, resumed {trial.resumed_from}: "
                  f"{verdict}", file=sys.stderr, flush=True)
    return ref, results


# ------------------------------------------------------------------------------- full disk

@dataclass
class DiskFullResult:
    method: str            # "RLIMIT_FSIZE" or "tmpfs"
    ok: bool
    error: str = ""        # what the user saw
    intact: int | None = None  # the previous checkpoint, loaded after the failure
    problems: list[str] = field(default_factory=list)
    skipped: str = ""


def _file_size_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def disk_full(run: FaultRun, ref: Reference, work: Path, method: str = "RLIMIT_FSIZE",
              timeout: float = 600) -> DiskFullResult:
    """Half the run with space, then a launch whose next checkpoint does not fit, then the rest
    with space again. ``tmpfs`` needs ``unshare`` (a user namespace) to mount a small tmpfs."""
    from rasd_hub._io import sha256_file
    from pretraining.checkpoint import list_checkpoints

    out = work / f"disk-{method}"
    shutil.rmtree(out, ignore_errors=True)
    result = DiskFullResult(method, ok=False)
    half = run.steps // 2 // run.checkpoint_every * run.checkpoint_every
    first = _launch(["child", *run.argv(out, steps=half)], _env(), timeout)
    if first.returncode != 0:
        result.problems.append(f"first launch failed: {first.stderr[-400:]}")
        return result
    newest = list_checkpoints(out / "checkpoints")[0][1]
    size = newest.stat().st_size
    digest = sha256_file(newest)
    if method == "RLIMIT_FSIZE":
        full = _launch(["child", *run.argv(out, resume=True)], _env(), timeout,
                       preexec=_file_size_limit(size // 2))
    else:
        full = _tmpfs_launch(run, out, work, size, timeout)
        if full is None:
            result.skipped = "cannot mount a tmpfs here (unshare --user --mount not permitted)"
            return result
    result.error = (full.stderr.strip().splitlines() or [""])[-1]
    if full.returncode != 2 or "could not write checkpoint" not in full.stderr \
            or "intact" not in full.stderr or "Traceback" in full.stderr:
        result.problems.append(f"expected a clear error (status 2), got {full.returncode}: "
                               f"{full.stderr.strip()[-600:]}")
    after = list_checkpoints(out / "checkpoints")
    result.intact = _newest_loadable(out)
    if not after or after[0][1] != newest or sha256_file(newest) != digest:
        result.problems.append("the previous checkpoint was changed")
    left = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    if left:
        result.problems.append(f"left behind: {left}")
    rest = _launch(["child", *run.argv(out, resume=True)], _env(), timeout)
    if rest.returncode != 0:
        result.problems.append(f"--resume with space failed: {rest.stderr[-400:]}")
    elif sha256_file(out / "export" / "model.safetensors") != ref.weights_sha256:
        result.problems.append("final weights differ from the uninterrupted run")
    result.ok = not result.problems
    if result.ok:
        shutil.rmtree(out, ignore_errors=True)
    return result


def _tmpfs_launch(run: FaultRun, out: Path, work: Path, checkpoint_size: int,
                  timeout: float) -> subprocess.CompletedProcess | None:
    """Resume inside a private mount namespace whose OUT is a tmpfs that holds what OUT holds now
    plus less than one more checkpoint; afterwards OUT (as the tmpfs left it) is copied back."""
    if not shutil.which("unshare"):
        return None
    used = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    size_kib = (used + checkpoint_size // 2) // 1024 + 64
    saved = work / "disk-tmpfs-saved"
    shutil.rmtree(saved, ignore_errors=True)
    shutil.copytree(out, saved)
    cmd = shlex.join(_child_cmd(["child", *run.argv(out, resume=True)]))
    o, s = shlex.quote(str(out)), shlex.quote(str(saved))
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {o} && cp -a {s}/. {o}/ && "
              f"{{ {cmd}; rc=$?; rm -rf {s} && mkdir {s} && cp -a {o}/. {s}/; exit $rc; }}")
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        return None
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    shutil.rmtree(out)
    shutil.copytree(saved, out)
    shutil.rmtree(saved)
    return proc


# ------------------------------------------------------------------------------- report / CLI

def format_report(ref: Reference, trials: list[Trial], disks: list[DiskFullResult]) -> str:
    killed = [t for t in trials if t.killed]
    lines = [f"reference: {ref.seconds:.1f} s per launch, {len(ref.events)} write events, "
             f"checkpoints {ref.checkpoints}",
             f"kill -9 trials: {len(trials)} ({len(killed)} died of the kill, the others had "
             f"finished first); survived {sum(t.survived for t in trials)}, lost "
             f"{sum(not t.survived for t in trials)}"]
    for mode in ("instant", "write", "rewrite"):
        group = [t for t in trials if t.mode == mode]
        if group:
            lines.append(f"  {mode:>7}: {sum(t.survived for t in group)}/{len(group)} survived")
    phases: dict[str, list[Trial]] = {}
    for t in trials:
        if t.mode != "instant":
            phases.setdefault(t.target.split()[0], []).append(t)
    for phase, group in sorted(phases.items()):
        lines.append(f"  {phase:>16}: {sum(t.survived for t in group)}/{len(group)}")
    resumed = [t.resumed_from for t in trials]
    lines.append(f"  resumed from steps: {sorted(set(map(str, resumed)))}")
    for t in trials:
        if not t.survived:
            lines.append(f"  LOST trial {t.index} ({t.mode} {t.target}): {'; '.join(t.problems)}")
    for d in disks:
        state = f"skipped ({d.skipped})" if d.skipped else ("ok" if d.ok else "FAILED: " + "; ".join(d.problems))
        lines.append(f"full disk ({d.method}): {state}" + (f"; error shown: {d.error}" if d.error else "")
                     + (f"; previous checkpoint step {d.intact} intact" if d.ok else ""))
    return "\n".join(lines)


def configure_bench_faults(parser: argparse.ArgumentParser) -> None:
    """Kill -9 the pre-training runner at random instants and inside its writes, then resume.

    Runs `python -m pretraining` (rasd2d_small, 32^2, 24 steps, one thread) once uninterrupted,
    then TRIALS times: SIGKILL it (in turn at a random instant, inside a random
    checkpoint/export/metrics/preview write, and inside a write of a re-launch of the finished
    run, i.e. the export's folder swap), `--resume` to the end, and compare with the
    uninterrupted run (weights bitwise, metrics, checkpoints, export, no leftovers). Then a full
    disk (file-size limit, and a small tmpfs where a user namespace may mount one). Prints the
    counts; exits 1 if anything was lost.
    """
    parser.add_argument("--trials", type=int, default=50, help="kill -9 trials (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill instants")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--no-disk-full", action="store_true", help="skip the full-disk checks")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_bench_faults)


def run_bench_faults(args: argparse.Namespace) -> int:
    from rasd_hub.errors import RasdValueError

    if args.trials < 0:
        raise RasdValueError("--trials must be at least 0")
    scratch = None
    if args.work_dir is None:
        scratch = tempfile.mkdtemp(prefix="rasd-bench-faults-")
    work = Path(args.work_dir or scratch)
    try:
        ref, trials = run_trials(args.trials, work, seed=args.seed, progress=True)
        disks = [] if args.no_disk_full else [
            disk_full(FaultRun(), ref, work, method) for method in ("RLIMIT_FSIZE", "tmpfs")]
        lost = sum(not t.survived for t in trials) + sum(not d.ok and not d.skipped for d in disks)
        if args.json:
            print(json.dumps({"trials": [asdict(t) for t in trials],
                              "disk_full": [asdict(d) for d in disks],
                              "reference_seconds": ref.seconds, "lost": lost}, indent=2))
        else:
            print(format_report(ref, trials, disks))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if lost else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        sys.exit(_child(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} child PRETRAIN_ARGS... (or `rasd bench faults`)")
