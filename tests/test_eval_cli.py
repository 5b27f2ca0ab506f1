"""`rasd eval finetune / compare / probe` end to end on a tiny synthetic nnU-Net raw dataset.

These check that the harness runs and reports what it promises; they measure nothing (2 steps).
"""

from __future__ import annotations

import json
import math

import pytest

from nnunet_plugin.datasets import build_synthetic_dataset
from rasd_hub.cli import main

STEPS = ["--steps", "2", "--batch-size", "1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build_synthetic_dataset(tmp_path_factory.mktemp("raw"), num_cases=4, num_test=2,
                                   shape=(32, 32))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A local weights folder in rasd_hub format (untrained: the harness must not care)."""
    import rasd_hub
    import torch

    torch.manual_seed(123)
    out = tmp_path_factory.mktemp("weights") / "rasd2d_small_test"
    rasd_hub.save_pretrained(rasd_hub.create_model("rasd2d_small"), out,
                             provenance={"preset": "test", "steps": 0})
    return out


def _run_json(capsys, argv) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_compare_json_schema_pairs_seeds(capsys, synthetic, weights_dir, tmp_path):
    out = tmp_path / "report.json"
    report = _run_json(capsys, ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small",
                                "--init", "scratch", "--init", str(weights_dir), "--seeds", "2",
                                "--out", str(out), *STEPS])
    assert json.loads(out.read_text()) == report
    assert report["seeds"] == [0, 1] and report["classes"] == ["blob"]
    assert report["config"]["steps"] == 2 and report["split"]["test"] == ["syn_004", "syn_005"]
    assert set(report["inits"]) == {"scratch", str(weights_dir)}
    for init, summary in report["inits"].items():
        per_seed = summary["per_seed_mean_dice"]
        assert len(per_seed) == 2 and all(0 <= v <= 1 for v in per_seed)
        assert summary["mean"] == pytest.approx(sum(per_seed) / 2)
        low, high = summary["ci95"]
        assert low <= summary["mean"] <= high
        assert [r["seed"] for r in summary["runs"]] == [0, 1]
        assert set(summary["runs"][0]["per_case"]) == {"syn_004", "syn_005"}
    assert "sha256" in report["inits"][str(weights_dir)]["source"]
    (pair,) = report["pairs"]
    assert pair["reference"] == "scratch" and pair["init"] == str(weights_dir)
    assert pair["test"].startswith("paired t-test") and pair["n"] == 2
    assert pair["p_value"] is None or 0 <= pair["p_value"] <= 1


@pytest.mark.slow
def test_finetune_text_report_and_reproducible_seed(capsys, synthetic, tmp_path):
    argv = ["eval", "finetune", "--data", str(synthetic), "--model", "rasd2d_small", "--init",
            "scratch", "--train-cases", "1", *STEPS]
    assert main(argv + ["--seeds", "2", "--out", str(tmp_path / "two.json")]) == 0
    text = capsys.readouterr().out
    assert "mean Dice" in text and "seed 0:" in text and "seed 1:" in text and "blob" in text
    assert "1 train / 2 test" in text
    two_seeds = json.loads((tmp_path / "two.json").read_text())["inits"]["scratch"]
    again = _run_json(capsys, argv + ["--seeds", "1"])["inits"]["scratch"]
    # seed 0 is the same run whether or not seed 1 follows: fixed seeds make runs repeatable
    assert again["per_seed_mean_dice"] == two_seeds["per_seed_mean_dice"][:1]
    assert again["runs"][0]["per_case"] == two_seeds["runs"][0]["per_case"]


def test_probe_runs_without_training_and_writes_pictures(capsys, synthetic, weights_dir, tmp_path):
    report = _run_json(capsys, ["eval", "probe", "--data", str(synthetic), "--model", "rasd2d_small",
                                "--init", "scratch", "--init", str(weights_dir), "--seeds", "1",
                                "--pca-out", str(tmp_path / "pics")])
    assert report["config"]["probe"].startswith("nearest prototype")
    # the pre-trained probe is one fixed value, scratch a sample over seeds: not a paired test
    assert report["pairs"][0]["test"] == "one-sample t-test (two-sided)"
    assert "nnU-Net ZScoreNormalization" in report["inits"]["scratch"]["runs"][0]["intensity"]
    for summary in report["inits"].values():
        assert 0 <= summary["mean"] <= 1 and math.isfinite(summary["mean"])
    assert len(list((tmp_path / "pics").glob("*.png"))) == 4  # 2 inits x 2 test cases


def test_finetune_pictures_show_input_reference_and_each_init(capsys, synthetic, tmp_path):
    from PIL import Image

    pics = tmp_path / "pics"
    report = _run_json(capsys, ["eval", "finetune", "--data", str(synthetic), "--model",
                                "rasd2d_small", "--init", "scratch", "--seeds", "1", *STEPS,
                                "--pictures", str(pics)])
    assert "predictions" not in report["inits"]["scratch"]["runs"][0]  # arrays stay out of JSON
    panels = sorted(pics.glob("*.png"))
    assert [p.stem for p in panels] == sorted(report["split"]["test"])
    width, height = Image.open(panels[0]).size
    assert width == 3 * 128 + 2 * 2 and height > 128  # input | reference | scratch, 32 px x 4


def test_table_summarises_saved_reports(capsys, synthetic, weights_dir, tmp_path):
    out = tmp_path / "report.json"
    report = _run_json(capsys, ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small",
                                "--init", "scratch", "--init", str(weights_dir), "--seeds", "2",
                                *STEPS, "--out", str(out)])
    assert main(["eval", "table", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| dataset |") and len(lines) == 3  # header, rule, one pair
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    pair = report["pairs"][0]
    scratch = report["inits"]["scratch"]["mean"]
    assert cells[0] == synthetic.name and cells[1] == "2 steps" and cells[2] == "4 / 2"
    assert cells[3].startswith(f"scratch: {scratch:.3f} [")
    assert cells[5] == f"{pair['mean_difference']:+.3f}"
    # the validation split and the recipe options that differ from the default show in the table
    study = tmp_path / "study.json"
    report = _run_json(capsys, ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small",
                                "--init", "scratch", "--init", str(weights_dir), "--seeds", "1",
                                *STEPS, "--evaluate-on", "validation", "--warmup-steps", "1",
                                "--encoder-lr-scale", "0.5", "--precision", "bf16", "--out", str(study)])
    assert report["split"]["evaluated_on"] == "validation" and report["config"]["warmup_steps"] == 1
    assert report["config"]["precision"] == "bf16"
    assert report["split"]["test"] == ["syn_002"]  # carved from the 4 training cases, not the test cases
    assert main(["eval", "table", str(study)]) == 0
    cells = [c.strip() for c in capsys.readouterr().out.splitlines()[2].strip("|").split("|")]
    assert cells[1] == "2 steps warmup_steps=1 encoder_lr_scale=0.5 precision=bf16"
    assert cells[2] == "3 / 1 (validation)"
    err = _error(capsys, ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small",
                          "--init", "scratch", "--backend", "nnunet", "--work", str(tmp_path / "w"),
                          "--freeze-encoder-steps", "3"])
    assert "--freeze-encoder-steps" in err and "only --backend inprocess" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["eval", "table", str(bad)]) == 2
    assert "not a readable" in capsys.readouterr().err


def _count_training(monkeypatch) -> list[tuple[str, int]]:
    """(init, seed) of every run the in-process comparison trains from now on."""
    import nnunet_plugin.evaluation.compare as compare

    trained = []
    real = compare.finetune_and_evaluate

    def counting(dataset, train, test, model, init, seed, *args, **kwargs):
        trained.append((init, seed))
        return real(dataset, train, test, model, init, seed, *args, **kwargs)

    monkeypatch.setattr(compare, "finetune_and_evaluate", counting)
    return trained


def test_compare_work_folder_keeps_runs_and_continues(capsys, synthetic, tmp_path, monkeypatch):
    trained = _count_training(monkeypatch)
    work, pics = tmp_path / "work", tmp_path / "pics"
    argv = ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small", "--init", "scratch",
            "--work", str(work), "--pictures", str(pics), *STEPS]
    first = _run_json(capsys, argv + ["--seeds", "1"])
    assert trained == [("scratch", 0)]
    (record,) = (work / "runs").rglob("seed_0.json")
    assert sorted(p.name for p in record.parent.iterdir()) == ["seed_0.json", "seed_0.npz"]  # no temporaries
    panels = {p.name: p.read_bytes() for p in pics.glob("*.png")}
    assert len(panels) == 2
    # more seeds with the same --work: seed 0 (and its pictures' predictions) comes from the folder
    second = _run_json(capsys, argv + ["--seeds", "2"])
    assert trained == [("scratch", 0), ("scratch", 1)]
    assert second["inits"]["scratch"]["runs"][0] == first["inits"]["scratch"]["runs"][0]
    assert {p.name: p.read_bytes() for p in pics.glob("*.png")} == panels
    # another recipe is another comparison: refused before any training, nothing mixed in
    err = _error(capsys, argv + ["--seeds", "2", "--steps", "3"])
    assert "holds another comparison (its config differ)" in err and "new --work" in err
    assert len(trained) == 2


def test_compare_work_folder_refuses_runs_of_weights_since_replaced(capsys, synthetic, tmp_path, monkeypatch):
    import torch

    import rasd_hub

    def write_weights(seed):
        torch.manual_seed(seed)
        rasd_hub.save_pretrained(rasd_hub.create_model("rasd2d_small"), weights, provenance={"preset": "test"})

    trained = _count_training(monkeypatch)
    weights, work = tmp_path / "weights", tmp_path / "work"
    write_weights(0)
    argv = ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small", "--init", str(weights),
            "--work", str(work), *STEPS]
    _run_json(capsys, argv + ["--seeds", "1"])
    _run_json(capsys, argv + ["--seeds", "1"])  # the same weights: taken from the folder
    assert len(trained) == 1
    write_weights(1)  # the same folder, other weights: the kept run is not theirs
    err = _error(capsys, argv + ["--seeds", "2"])
    assert "now names weights with sha256" in err and "seed_0.json" in err and "new --work" in err
    assert len(trained) == 1


def test_bad_inputs_give_clear_errors(capsys, synthetic, tmp_path):
    base = ["eval", "finetune", "--model", "rasd2d_small", *STEPS]
    err = _error(capsys, base + ["--data", str(tmp_path), "--init", "scratch"])
    assert "no dataset.json" in err and "Traceback" not in err
    err = _error(capsys, base + ["--data", str(synthetic), "--init", "no-such-tag"])
    assert "no-such-tag" in err and "--init" in err
    err = _error(capsys, base + ["--data", str(synthetic), "--init", str(tmp_path / "missing")])
    assert "missing" in err
    err = _error(capsys, base + ["--data", str(synthetic), "--init", "scratch", "--train-cases", "9"])
    assert "--train-cases 9" in err and "4 training cases" in err
    err = _error(capsys, base + ["--data", str(synthetic), "--init", "scratch", "--seeds", "0"])
    assert "--seeds" in err
    err = _error(capsys, ["eval", "compare", "--data", str(synthetic), "--model", "rasd2d_small",
                          "--init", "scratch", "--init", "scratch", *STEPS])
    assert "once" in err
    a_file = tmp_path / "taken"
    a_file.write_text("")
    err = _error(capsys, base + ["--data", str(synthetic), "--init", "scratch", "--pictures", str(a_file)])
    assert "--pictures" in err and "not a folder" in err
    err = _error(capsys, base + ["--data", str(synthetic), "--init", "scratch", "--out", str(tmp_path)])
    assert "--out" in err and "not a file path" in err


def test_init_with_other_architecture_arguments_is_refused(capsys, synthetic, tmp_path):
    import rasd_hub

    narrow = tmp_path / "narrow"
    rasd_hub.save_pretrained(rasd_hub.create_model("rasd2d_small", channels=(8, 16, 32, 64, 128)),
                             narrow, provenance={"preset": "test"})
    err = _error(capsys, ["eval", "finetune", "--data", str(synthetic), "--model", "rasd2d_small",
                          "--init", str(narrow), *STEPS])
    assert "one architecture for every init" in err


def test_3d_model_on_2d_data_is_refused(capsys, synthetic):
    err = _error(capsys, ["eval", "finetune", "--data", str(synthetic), "--model", "rasd3d_small",
                          "--init", "scratch", *STEPS])
    assert "3D network" in err and "2D cases" in err


@pytest.mark.slow
def test_3d_dataset_end_to_end(capsys, tmp_path):
    folder = build_synthetic_dataset(tmp_path, num_cases=2, num_test=1, shape=(32, 32, 32))
    report = _run_json(capsys, ["eval", "finetune", "--data", str(folder), "--model", "rasd3d_small",
                                "--init", "scratch", "--seeds", "1", *STEPS,
                                "--pictures", str(tmp_path / "pics")])
    assert 0 <= report["inits"]["scratch"]["mean"] <= 1
    assert len(list((tmp_path / "pics").glob("*.png"))) == 1  # the 3D case's busiest slice
