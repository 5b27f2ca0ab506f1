"""`rasd pretrain`, `rasd demo` and `rasd bench train`.

Only argparse wiring lives here; torch and the runner are imported inside the run functions so
that `rasd --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from rasd_hub.cli_hub import model_arg

__all__ = ["configure_pretrain", "configure_demo", "configure_bench_train", "config_from_args"]


def configure_pretrain(parser: argparse.ArgumentParser) -> None:
    """Pre-train a model with PDL on synthetic data (one process or torchrun/DDP).

    Examples:
      rasd pretrain --list-presets
      rasd pretrain --preset rasd2d_small --out runs/small          # a few minutes on a CPU
      rasd pretrain --preset rasd2d_small --out runs/small --resume # continue after preemption
      torchrun --nproc_per_node 8 -m pretraining --preset rasd3d_swinb --out runs/swinb --resume

    Writes OUT/checkpoints/, OUT/metrics.jsonl, OUT/preview_*.png and OUT/export/ (rasd_hub
    weights, the same as `rasd hub export` of the final checkpoint). --steps is the total step
    count, so a resumed run stops where an uninterrupted one would. SIGTERM/SIGINT writes a
    checkpoint before exiting. --resume with a new --lr, schedule or weight decay applies the new
    values from the resumed step on (and says so).
    """
    add_pretrain_arguments(parser)
    parser.set_defaults(func=run_pretrain)


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--preset", help="recipe name (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="show the presets and exit")
    p.add_argument("--steps", type=int, help="total optimiser steps of the run (default: preset)")
    p.add_argument("--batch-size", type=int,
                   help="global batch per step, split evenly across ranks "
                        "(default: the preset's batch per rank times the number of ranks)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and synthesis streams")
    p.add_argument("--out", default=None, help="output directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT/checkpoints that loads "
                        "(starts fresh if there are no checkpoint files; refuses if there are "
                        "some but none loads)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="newest checkpoints to keep, 0 = all (default 3)")
    p.add_argument("--log-every", type=int, help="steps between metrics lines")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1 ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast or fp32; auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward (less memory, slower)")
    p.add_argument("--size", type=int, help="edge length of the synthetic images (default: preset)")
    p.add_argument("--num-classes", type=int, help="classes per label map (default: preset)")
    p.add_argument("--synthesis", metavar="{official,paper}",
                   help="synthesis preset: official (the released code) or paper (the paper's "
                   "text); default: the preset's")
    p.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", default=None,
                   help="architecture arguments on top of the preset's, e.g. upsample=linear "
                   "(values read as JSON, else as text; `rasd hub info MODEL` lists them)")
    p.add_argument("--synthesis-kwargs", nargs="+", metavar="KEY=VALUE", default=None,
                   help="synthesis fields on top of the preset's, e.g. zscore=true or "
                   "heatmap_scales=[16,32] (values read as JSON; the fields are "
                   "pretraining.synthesis.SynthesisConfig's)")
    p.add_argument("--pdl-normalize", action="store_true",
                   help="L2-normalise embeddings and prototypes in the PDL loss (the released code "
                   "does not)")
    p.add_argument("--pdl-separation-weight", type=float,
                   help="weight of PDL's prototype separation term (default 1)")
    p.add_argument("--pdl-clustering-weight", type=float,
                   help="weight of PDL's prototype-to-pixel clustering term (default 1)")
    p.add_argument("--warmup-steps", type=int, help="linear lr warm-up steps")
    p.add_argument("--schedule", choices=["constant", "cosine"], help="lr schedule after warm-up")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (default: preset)")
    p.add_argument("--offline", nargs="?", const="", default=None, metavar="POOL_DIR",
                   help="benchmark only (paper Table 1): pre-generate a fixed pool of batches to "
                        "POOL_DIR (default OUT/offline_pool) and train on it instead of online "
                        "synthesis")
    p.add_argument("--offline-batches", type=int, default=50,
                   help="batches in the offline pool (default 50)")
    p.add_argument("--no-preview", action="store_true", help="skip the preview PNGs")
    p.add_argument("--no-export", action="store_true", help="skip OUT/export at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The :class:`~pretraining.config.TrainConfig` that the arguments describe."""
    from pretraining.config import TrainConfig
    from rasd_hub.errors import RasdValueError

    if not args.preset:
        raise RasdValueError("--preset is required (see `rasd pretrain --list-presets`)")
    out = args.out or f"runs/{args.preset}"
    offline = None
    if args.offline is not None:
        offline = args.offline or f"{out}/offline_pool"
    from dataclasses import replace

    from pretraining.pdl import PDLConfig
    from pretraining.presets import get_preset

    preset = get_preset(args.preset)

    def key_values(option: str, given: list[str] | None, example: str, base: dict) -> dict | None:
        if not given:
            return None
        try:
            return {**base, **dict(map(model_arg, given))}
        except argparse.ArgumentTypeError as err:
            raise RasdValueError(f"{option}: {err}, e.g. {example}") from None

    model_kwargs = key_values("--model-kwargs", args.model_kwargs, "upsample=linear",
                              preset.model_kwargs)
    synthesis_kwargs = key_values("--synthesis-kwargs", args.synthesis_kwargs, "zscore=true",
                                  preset.synthesis_kwargs)
    pdl = None
    pdl_changes = {k: v for k, v in (("normalize", args.pdl_normalize or None),
                                     ("separation_weight", args.pdl_separation_weight),
                                     ("clustering_weight", args.pdl_clustering_weight)) if v is not None}
    if pdl_changes:
        try:
            pdl = replace(PDLConfig(normalize=preset.pdl_normalize), **pdl_changes)
        except ValueError as err:
            raise RasdValueError(f"--pdl-*: {err}") from None
    return TrainConfig.from_preset(
        args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        out_dir=out, resume=args.resume, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, device=args.device,
        compile=args.compile, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, size=args.size,
        num_classes=args.num_classes, warmup_steps=args.warmup_steps, schedule=args.schedule,
        grad_clip=args.grad_clip, offline_pool=offline, offline_pool_batches=args.offline_batches,
        preview=not args.no_preview, export=not args.no_export, synthesis=args.synthesis,
        synthesis_kwargs=synthesis_kwargs, pdl=pdl, model_kwargs=model_kwargs,
    )



def run_pretrain(args: argparse.Namespace) -> int:
    from pretraining.presets import format_presets

    if args.list_presets:
        print(format_presets())
        return 0
    from pretraining.errors import TrainingInterrupted
    from pretraining.runner import run_pretraining

    config = config_from_args(args)
    try:
        result = run_pretraining(config, progress=not args.no_progress)
    except TrainingInterrupted as stop:
        print(f"rasd pretrain: {stop}", file=sys.stderr)
        return 128 + stop.signum
    if result.rank == 0:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
        print(f"done: step {result.step}{resumed}, final loss {loss}, {result.nonfinite_steps} "
              f"skipped steps, {result.wall_seconds:.0f} s")
        print(f"checkpoint: {result.checkpoint}")
        if result.export_dir is not None:
            print(f"weights:    {result.export_dir}")
        for preview in result.previews:
            print(f"preview:    {preview}")
    return 0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Run the main job end to end on CPU: synthesise, pre-train, export, fine-tune in nnU-Net.

    A few minutes on 2 CPU cores, no network: writes a synthetic-data preview, pre-trains
    rasd2d_small with PDL, exports the weights in rasd_hub format, reloads them with
    rasd_hub.create_model(..., pretrained=OUT/export) and checks the reloaded model reproduces
    the trained one, writes the prototype-assignment previews, then plans, fine-tunes and
    predicts with nnU-Net's own commands on real microscopy tiles shipped in the package
    (OUT/nnunet/: commands.txt, predictions, input | reference | prediction pictures).
    """
    parser.add_argument("--out", default="rasd-demo", help="output directory (default rasd-demo)")
    parser.add_argument("--steps", type=int, default=None, help="pre-training steps")
    parser.add_argument("--preset", default="rasd2d_small", help="preset (default rasd2d_small)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: demo's)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")
    parser.add_argument("--nnunet-trainer", default="RaSDTrainerSmall_20epochs_cpu",
                        help="nnU-Net trainer of the fine-tuning stage (default "
                             "RaSDTrainerSmall_20epochs_cpu; 'none' skips the stage)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pretraining.demo import run_demo as demo

    trainer = None if args.nnunet_trainer.lower() == "none" else args.nnunet_trainer
    report = demo(out_dir=args.out, preset=args.preset, steps=args.steps, size=args.size,
                  device=args.device, progress=not args.no_progress, nnunet_trainer=trainer)
    print(report.summary())
    return 0 if report.ok else 1


def configure_bench_train(parser: argparse.ArgumentParser) -> None:
    """Measure pre-training throughput: steps/s, samples/s, synthesis share, peak memory.

    Times `--steps` PDL training steps after `--warmup` untimed ones, with a fresh synthetic
    batch every step. --compare-released adds, in the same process on the same device, the
    released code's recipe (fp32, gradient checkpointing, one new sample synthesised per step
    into a re-used batch queue) and prints the speed-up.
    """
    parser.add_argument("--preset", default="rasd2d_small", help="preset (default rasd2d_small)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=int, help="batch (default: preset)")
    parser.add_argument("--size", type=int, help="image size (default: preset)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--released-recipe", action="store_true",
                        help="measure only the released code's recipe")
    parser.add_argument("--compare-released", action="store_true",
                        help="measure ours and the released recipe side by side")
    parser.add_argument("--offline", action="store_true",
                        help="also measure training from a pool pre-generated to disk (paper "
                             "Table 1: preparation time and storage)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_bench_train)


def run_bench_train(args: argparse.Namespace) -> int:
    from pretraining.bench import BenchSettings, format_results, run_bench

    settings = BenchSettings(
        preset=args.preset, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
        size=args.size, device=args.device, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, compile=args.compile,
    )
    recipes = ["released"] if args.released_recipe else ["rasd-hub"]
    if args.compare_released and "released" not in recipes:
        recipes.append("released")
    if args.offline:
        recipes.append("offline")
    results = run_bench(settings, recipes)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_results(results))
    return 0
