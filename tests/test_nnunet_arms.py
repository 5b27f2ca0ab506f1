"""`rasd eval nnunet`'s bookkeeping: few-shot splits, the paired summary and its table (the nnU-Net
runs themselves are exercised by test_nnunet_cli.py)."""

from __future__ import annotations

import json

import pytest

from nnunet_plugin.evaluation.nnunet_arms import (
    ARMS, _write_few_shot_splits, format_summary, summarise,
)


def test_few_shot_splits_train_k_cases_per_fold_and_validate_on_others(tmp_path):
    cases = [f"case_{i:02d}" for i in range(12)]
    _write_few_shot_splits(tmp_path, cases, k=3, folds=[0, 1, 2], max_val=4)
    splits = json.loads((tmp_path / "splits_final.json").read_text())
    assert len(splits) == 3
    for split in splits:
        assert len(split["train"]) == 3 and len(split["val"]) == 4
        assert not set(split["train"]) & set(split["val"])
    assert len({tuple(s["train"]) for s in splits}) == 3  # folds draw different cases
    _write_few_shot_splits(tmp_path, cases, k=3, folds=[0, 1, 2], max_val=4)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == splits  # seeded


def _run(arm, fold, test, val=0.5, seconds=10.0, regime="3"):
    return {"regime": regime, "arm": arm, "fold": fold, "validation_dice": val,
            "test_dice": {"1": test}, "train_seconds": seconds}


def test_summary_pairs_arms_over_the_folds_both_ran():
    report = {"runs": [
        _run("resenc_rasd_adamw", 0, 0.80), _run("resenc_rasd_adamw", 1, 0.70), _run("resenc_rasd_adamw", 2, 0.90),
        _run("resenc_scratch_adamw", 0, 0.70), _run("resenc_scratch_adamw", 1, 0.65),
    ]}
    rows = {r["arm"]: r for r in summarise(report, reference="resenc_rasd_adamw")}
    assert rows["resenc_rasd_adamw"]["test_dice"]["mean"] == pytest.approx(0.8)
    vs = rows["resenc_scratch_adamw"]["vs_resenc_rasd_adamw"]
    assert vs["n"] == 2 and vs["mean_difference"] == pytest.approx(0.075)  # folds 0 and 1 only
    table = format_summary(list(rows.values()), reference="resenc_rasd_adamw")
    assert "| 3 | resenc_scratch_adamw |" in table and "+0.075" in table


def test_every_arm_names_a_trainer_and_plans():
    assert {a.plans for a in ARMS.values()} == {"RaSDResEncPlans", "RaSDPlans", "nnUNetPlans"}
    twins = {a.name for a in ARMS.values() if "scratch" in a.name}
    assert all(ARMS[t.replace("scratch", "rasd")].plans == ARMS[t].plans for t in twins)
