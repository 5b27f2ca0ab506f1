"""`rasd demo`: the main job end to end (slow: real synthesis, real small model), and its report
when a dependency is missing."""

import json

import pytest

from pretraining.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end_short(tmp_path):
    from rasd_hub.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "8", "--size", "32",
                 "--nnunet-trainer", "RaSDTrainerSmall_2epochs_cpu", "--no-progress"]) == 0
    report = json.loads((out / "demo.json").read_text())
    assert report["ok"], report
    assert [s["name"] for s in report["stages"]] == ["synthesis", "pretrain", "reload", "evaluate",
                                                     "nnunet"]
    for name in ("synthetic_batch.png", "preview_start.png", "preview_end.png",
                 "metrics.jsonl", "export/model.safetensors", "export/config.json",
                 "nnunet/commands.txt", *report["nnunet"]["pictures"]):
        assert (out / name).stat().st_size > 0, name
    # nnU-Net fine-tuned the demo's own export and scored both real test tiles
    dice = report["nnunet"]["dice"]
    assert len(dice) == 2 and all(0 <= d <= 1 for d in dice.values())
    fold = next((out / "nnunet" / "results").glob("Dataset506_*/*__RaSDPlans__2d/fold_0"))
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"RaSD: loaded {(out / 'export').resolve()}" in log
    assert report["final_loss"] < report["first_loss"]
    # the final checkpoint exports (`rasd hub export`) to the same weights as OUT/export
    import rasd_hub
    import torch

    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    exported = rasd_hub.export_checkpoint(ckpt, tmp_path / "exported")
    a, b = rasd_hub.load(str(exported)).state_dict(), rasd_hub.load(str(out / "export")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second run into the same folder starts over instead of refusing
    again = run_demo(out, steps=1, size=32, progress=False, nnunet_trainer=None)
    assert again.ok, again.summary()


def test_demo_reports_a_failing_stage_and_skips_what_depends_on_it(tmp_path, monkeypatch):
    import pretraining.synthesis

    def broken(*args, **kwargs):
        raise RuntimeError("synthesis exploded")

    monkeypatch.setattr(pretraining.synthesis, "synthesize", broken)
    report = run_demo(tmp_path, steps=2, size=32, progress=False)
    assert not report.ok
    statuses = {s.name: s.status for s in report.stages}
    assert statuses == {"synthesis": "failed", "pretrain": "skipped",
                        "reload": "skipped", "evaluate": "skipped", "nnunet": "skipped"}
    assert "synthesis exploded" in report.summary()
