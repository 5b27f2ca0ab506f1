"""Drive nnU-Net's own command-line tools (and `rasd nnunet plan`) as a user runs them: tests, benchmarks, the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nnunet_plugin.discovery import ENV_VAR as EXT_TRAINER_VAR


def nnunet_environment(root, base: dict | None = None, keep_ext_trainer: bool = False) -> dict:
    """Environment for nnU-Net commands with raw/preprocessed/results folders under ``root``.

    ``nnUNet_n_proc_DA=0`` runs data augmentation in the training process (no worker processes)
    and ``nnUNet_def_n_proc=1`` keeps preprocessing and export single-process, which suits small
    CPUs. ``nnUNet_extTrainer`` is removed unless ``keep_ext_trainer``: each command's interpreter
    must find the trainers on its own (that is what the installed ``.pth`` file is for).
    """
    root = Path(root)
    env = dict(os.environ if base is None else base)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[f"nnUNet_{name}"] = str(root / name)
    env["nnUNet_n_proc_DA"] = "0"
    env["nnUNet_def_n_proc"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    if not keep_ext_trainer:
        env.pop(EXT_TRAINER_VAR, None)
    return env


def nnunet_command(name: str) -> str:
    """Path of a console script (nnU-Net's, ``rasd``) installed next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_nnunet(args: list[str], env: dict, timeout: float = 600, check: bool = True,
               log: Path | None = None) -> subprocess.CompletedProcess:
    """Run one nnU-Net command; on failure raise with the tail of its output."""
    proc = subprocess.run([nnunet_command(args[0]), *args[1:]], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if log is not None:
        Path(log).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}")
    return proc


def plan_and_preprocess(dataset_id: int, env: dict, configurations=("2d",), preprocess: bool = True,
                        verify: bool = True):
    """``nnUNetv2_plan_and_preprocess`` for one dataset (planning needs one DA thread: nnU-Net's
    planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which refuses 0).

    ``verify=False`` skips ``--verify_dataset_integrity``, whose worker pool is one more Python
    start (seconds on a small CPU) for datasets a test has just written itself."""
    plan_env = dict(env, nnUNet_n_proc_DA="1")
    # -npfp: fingerprint workers default to 8 regardless of nnUNet_def_n_proc (8 interpreters
    # importing torch, for a few images)
    args = ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations,
            "-np", *["1"] * len(configurations), "-npfp", "1"]
    if verify:
        args.append("--verify_dataset_integrity")
    if not preprocess:
        args.append("--no_pp")
    return run_nnunet(args, plan_env)


def rasd_plan(dataset_id: int, env: dict, weights, *extra: str) -> subprocess.CompletedProcess:
    """``rasd nnunet plan -d ID --weights W ...`` as a user runs it."""
    return run_nnunet(["rasd", "nnunet", "plan", "-d", str(dataset_id), "--weights", str(weights),
                       *extra], env)


def train_fold(dataset_id: int, configuration: str, fold: int, plans: str, trainer: str, env: dict,
               device: str = "cpu", timeout: float = 3600, log: Path | None = None) -> float:
    """``nnUNetv2_train`` of one fold; returns its wall time in seconds."""
    import time

    started = time.perf_counter()
    run_nnunet(["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-p", plans, "-tr", trainer,
                "-device", device], env, timeout=timeout, log=log)
    return time.perf_counter() - started


def predict_fold(dataset_id: int, configuration: str, fold: int, plans: str, trainer: str, images, out,
                 env: dict, device: str = "cpu", timeout: float = 3600,
                 log: Path | None = None) -> subprocess.CompletedProcess:
    """``nnUNetv2_predict`` of ``images`` into ``out`` with one trained fold (one worker each way:
    small CPU machines)."""
    return run_nnunet(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id),
                       "-c", configuration, "-f", str(fold), "-p", plans, "-tr", trainer, "-device", device,
                       "-npp", "1", "-nps", "1", "--disable_progress_bar"], env, timeout=timeout, log=log)


def write_splits_final(preprocessed_folder, splits: list[dict]) -> Path:
    """Write nnU-Net's ``splits_final.json`` (one ``{"train": [...], "val": [...]}`` per fold)
    into a dataset's preprocessed folder, atomically; nnU-Net uses it instead of its own 5-fold
    split when it exists (its documented way to set custom splits)."""
    from rasd_hub._io import write_json_atomic

    path = Path(preprocessed_folder) / "splits_final.json"
    write_json_atomic(path, [{"train": list(s["train"]), "val": list(s["val"])} for s in splits])
    return path


def save_random_weights(architecture: str, out_dir, seed: int = 0,
                        normalization: dict | None = None) -> Path:
    """Randomly initialised weights of ``architecture`` in rasd_hub's format, for tests that need
    a second set of weights beside the shipped ones. ``normalization`` replaces the config's (e.g.
    other measured moments, which give another input mapping in nnU-Net)."""
    import rasd_hub
    import torch

    torch.manual_seed(seed)
    model = rasd_hub.create_model(architecture)
    if normalization is not None:
        rasd_hub.set_normalization(model, normalization)
    rasd_hub.save_pretrained(model, out_dir, provenance={"note": "random weights for tests",
                                                         "seed": seed})
    return Path(out_dir)
