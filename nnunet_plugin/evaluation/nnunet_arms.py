"""Pre-trained vs from scratch through nnU-Net's own commands (``rasd eval nnunet``).

Every arm is a ``nnUNetv2_train`` run with a plans identifier and a trainer, then
``nnUNetv2_predict`` on the dataset's held-out test cases; Dice per class is computed here from
the written predictions. Repetitions are nnU-Net folds: a fold fixes the training cases, the
validation cases and (through ``RASD_SEED`` and the fold) the seeds, and every arm trains the same
folds, so arms are compared fold by fold (paired). Few-shot regimes get their own
``splits_final.json`` (fold f trains on ``k`` cases drawn with seed f, validates on the others),
written before training as nnU-Net documents for custom splits.

Arms (``ARMS``): nnU-Net's Residual Encoder U-Net pre-trained with RaSD and from scratch, with
nnssl's SGD recipe or AdamW; nnU-Net's own network and trainer with its default plans; and the
MONAI-based ``RaSDTrainerSmall`` on its RaSD plans. All run the same short budget (20 epochs of
12 iterations: minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["ARMS", "Arm", "TASKS", "Task", "run_arms", "summarise", "format_summary"]


@dataclass(frozen=True)
class Arm:
    name: str
    plans: str
    trainer: str
    description: str


RESENC_PLANS, MONAI_PLANS = "RaSDResEncPlans", "RaSDPlans"
ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("resenc_rasd_sgd", RESENC_PLANS, "RaSDTrainerSGD_20epochs_cpu",
        "ResEnc U-Net, RaSD weights, SGD 1e-3 (nnssl's recipe)"),
    Arm("resenc_scratch_sgd", RESENC_PLANS, "RaSDTrainerSGDFromScratch_20epochs_cpu",
        "the same plans from scratch, SGD 1e-3"),
    Arm("resenc_rasd_adamw", RESENC_PLANS, "RaSDTrainerSmall_20epochs_cpu",
        "ResEnc U-Net, RaSD weights, AdamW 1e-3"),
    Arm("resenc_scratch_adamw", RESENC_PLANS, "RaSDTrainerSmallFromScratch_20epochs_cpu",
        "the same plans from scratch, AdamW 1e-3"),
    Arm("nnunet_default", "nnUNetPlans", "nnUNetTrainer_RaSDBudget_20epochs_cpu",
        "nnU-Net's own network, plans and trainer (SGD 1e-2)"),
    Arm("monai_rasd", MONAI_PLANS, "RaSDTrainerSmall_20epochs_cpu",
        "MONAI UNet rasd2d_small, RaSD weights, AdamW 1e-3 (the earlier plugin network)"),
]}


def _write_few_shot_splits(preprocessed: Path, cases: list[str], k: int, folds: Sequence[int],
                           max_val: int) -> None:
    from nnunet_plugin.commands import write_splits_final

    splits = []
    for fold in range(max(folds) + 1):
        order = list(np.random.default_rng(fold).permutation(cases))
        splits.append({"train": sorted(order[:k]), "val": sorted(order[k:k + max_val])})
    write_splits_final(preprocessed, splits)


def _test_dice(raw: Path, predictions: Path, labels: list[int]) -> dict[str, float]:
    """Mean test Dice per label over the cases where it is defined (labels absent from both the
    prediction and the reference are left out)."""
    from nnunet_plugin.datasets import prediction_dice

    per_case = prediction_dice(raw / "labelsTs", predictions, labels)
    per_label = {v: [d[v] for d in per_case.values() if not np.isnan(d[v])] for v in labels}
    return {str(v): float(np.mean(ds)) for v, ds in per_label.items() if ds}


@dataclass(frozen=True)
class Task:
    """One real task per dimensionality: the nnU-Net configuration, the dataset ids (``few_shot_id
    + k`` for k training cases, ``full_id`` for nnU-Net's own 5-fold split) and the default
    weights of the two pre-trained arms."""

    configuration: str
    dataset_name: str
    few_shot_id: int
    full_id: int
    resenc_weights: str
    monai_weights: str

    def build(self, raw_root, dataset_id: int) -> Path:
        from nnunet_plugin.datasets import build_liver_ct_2d, build_liver_ct_3d

        if self.configuration == "2d":  # axial slices, 64x64
            return build_liver_ct_2d(raw_root, dataset_id, size=64, merge_tumour=True, name=self.dataset_name)
        # 32^3 blocks with liver (42 of them: 32 training, 10 test cases)
        return build_liver_ct_3d(raw_root, dataset_id, block=32, merge_tumour=True, name=self.dataset_name)


TASKS = {"2d": Task("2d", "LiverCT2D", 520, 530, "rasd2d_resenc_small", "rasd2d_small"),
         "3d": Task("3d_fullres", "LiverCT3D", 540, 550, "rasd3d_resenc_small", "rasd3d_small")}


def run_arms(work: Path, *, arms: Sequence[str], folds: Sequence[int], regimes: Sequence[str],
             dimensionality: str = "2d", resenc_weights: str | None = None, monai_weights: str | None = None,
             max_val: int = 6, log=print) -> dict[str, Any]:
    """Run every arm on every fold of every regime (``"all"`` or a number of training cases) on
    the LiTS CT (liver vs rest): 64x64 axial slices for ``"2d"``, 32^3 blocks for ``"3d"``; return
    the report (also written to ``work/report.json`` after each run, so an interrupted study keeps
    what it measured)."""
    from rasd_hub._io import write_json_atomic
    from nnunet_plugin.commands import (
        nnunet_environment, plan_and_preprocess, predict_fold, rasd_plan, train_fold,
    )

    task = TASKS[dimensionality]
    cfg = task.configuration
    resenc_weights = resenc_weights or task.resenc_weights
    monai_weights = monai_weights or task.monai_weights
    work = Path(work)
    env = nnunet_environment(work / "nnunet")
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"runs": []}
    done = {(r.get("dimensionality", "2d"), r["regime"], r["arm"], r["fold"]) for r in report["runs"]}
    for regime in regimes:
        # one dataset per regime (its splits_final.json is the regime's)
        did = task.full_id if regime == "all" else task.few_shot_id + int(regime)
        name = f"Dataset{did}_{task.dataset_name}"
        raw = Path(env["nnUNet_raw"]) / name
        if not (Path(env["nnUNet_preprocessed"]) / name / f"{RESENC_PLANS}.json").exists():
            task.build(env["nnUNet_raw"], did)
            plan_and_preprocess(did, env, configurations=(cfg,), verify=False)
            rasd_plan(did, env, resenc_weights, "-c", cfg, "--plans-name", RESENC_PLANS)
            rasd_plan(did, env, monai_weights, "-c", cfg)
        cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
        if regime != "all":
            _write_few_shot_splits(Path(env["nnUNet_preprocessed"]) / name, cases, int(regime), folds,
                                   max_val)
        for fold in folds:
            for arm_name in arms:
                if (dimensionality, regime, arm_name, fold) in done:
                    continue
                arm = ARMS[arm_name]
                trained = train_fold(did, cfg, fold, arm.plans, arm.trainer, env)
                out = work / "predictions" / dimensionality / regime / arm_name / str(fold)
                predict_fold(did, cfg, fold, arm.plans, arm.trainer, raw / "imagesTs", out, env)
                fold_dir = (Path(env["nnUNet_results"]) / name / f"{arm.trainer}__{arm.plans}__{cfg}"
                            / f"fold_{fold}")
                summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
                run = {"dimensionality": dimensionality, "regime": regime, "arm": arm_name, "fold": fold,
                       "plans": arm.plans, "trainer": arm.trainer, "train_seconds": round(trained, 1),
                       "validation_dice": summary["foreground_mean"]["Dice"],
                       "test_dice": _test_dice(raw, out, [1])}
                report["runs"].append(run)
                write_json_atomic(report_path, report)
                log(f"{dimensionality} {regime:>4} {arm_name:<22} fold {fold}: val {run['validation_dice']:.3f} "
                    f"test {run['test_dice'].get('1', float('nan')):.3f} ({trained:.0f} s)")
    return report


def summarise(report: dict[str, Any], reference: str = "resenc_rasd_sgd") -> list[dict[str, Any]]:
    """Per dimensionality, regime and arm: mean test / validation Dice with 95 % CI, and the paired
    test of the reference arm against each other arm over the folds both ran."""
    from nnunet_plugin.evaluation.stats import mean_ci, paired_test

    rows = []
    runs = report["runs"]
    for dimensionality, regime in dict.fromkeys((r.get("dimensionality", "2d"), r["regime"]) for r in runs):
        by_arm: dict[str, dict[int, dict]] = {}
        for r in runs:
            if (r.get("dimensionality", "2d"), r["regime"]) == (dimensionality, regime):
                by_arm.setdefault(r["arm"], {})[r["fold"]] = r
        for arm, folds in by_arm.items():
            test = [f["test_dice"]["1"] for f in folds.values()]
            row = {"dimensionality": dimensionality, "regime": regime, "arm": arm, "folds": sorted(folds),
                   "test_dice": mean_ci(test).as_dict(),
                   "validation_dice": mean_ci([f["validation_dice"] for f in folds.values()]).as_dict(),
                   "train_seconds": float(np.mean([f["train_seconds"] for f in folds.values()]))}
            if arm != reference and reference in by_arm:
                common = sorted(set(folds) & set(by_arm[reference]))
                row[f"vs_{reference}"] = paired_test(
                    [folds[f]["test_dice"]["1"] for f in common],
                    [by_arm[reference][f]["test_dice"]["1"] for f in common]).as_dict()
            rows.append(row)
    return rows


def format_summary(rows: list[dict[str, Any]], reference: str = "resenc_rasd_sgd") -> str:
    """A Markdown table of :func:`summarise`'s rows."""

    def ci(d):
        lo, hi = d["ci95"]
        return f"{d['mean']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")

    lines = [f"| task | train cases | arm | test Dice (95 % CI) | validation Dice | {reference} - arm (p) | "
             "train s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        vs = r.get(f"vs_{reference}")
        diff = f"{vs['mean_difference']:+.3f} (p {vs['p_value']:.2f})" if vs and vs["p_value"] is not None else (
            f"{vs['mean_difference']:+.3f}" if vs else "")
        lines.append(f"| {r['dimensionality']} | {r['regime']} | {r['arm']} | {ci(r['test_dice'])} | {ci(r['validation_dice'])} | "
                     f"{diff} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def configure(parser) -> None:
    """Pre-trained vs from scratch through nnUNetv2_train / nnUNetv2_predict (LiTS CT, liver).

    2D: 64x64 axial slices (configuration 2d); 3D: 32^3 blocks (3d_fullres). Every arm trains
    the same nnU-Net folds (paired), predicts the held-out test cases and
    reports Dice with 95 % CIs and paired t-tests; nnU-Net's own validation Dice of each fold is
    reported too (that is what a recipe is chosen on). Re-running with the same --work continues
    where it stopped.

    Example:
      rasd eval nnunet --work runs/arms --regimes 1 3 all --folds 0 1 2
      rasd eval nnunet --work runs/arms3d --dimensionality 3d --arms resenc_rasd_adamw \\
          resenc_scratch_adamw nnunet_default monai_rasd --regimes 1 3 all
    """
    parser.add_argument("--work", required=True, help="working folder (nnU-Net data, results, report.json)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="+", default=["3", "all"],
                        help="training cases per fold: a number (few-shot) or 'all' (nnU-Net's 5-fold split)")
    parser.add_argument("--dimensionality", choices=list(TASKS), default="2d")
    parser.add_argument("--resenc-weights", default=None,
                        help="weights of the ResEnc arms (default: rasd2d_resenc_small / rasd3d_resenc_small)")
    parser.add_argument("--monai-weights", default=None,
                        help="weights of the MONAI arm (default: rasd2d_small / rasd3d_small)")
    parser.add_argument("--reference", default=None, choices=list(ARMS),
                        help="the arm every other is paired against (default: the first of --arms)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    report = run_arms(Path(args.work), arms=args.arms, folds=args.folds, regimes=args.regimes,
                      dimensionality=args.dimensionality, resenc_weights=args.resenc_weights, monai_weights=args.monai_weights)
    reference = args.reference or args.arms[0]
    print(format_summary(summarise(report, reference), reference))
    return 0
