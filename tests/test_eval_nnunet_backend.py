"""`rasd eval compare --backend nnunet`: the comparison through nnUNetv2_train / nnUNetv2_predict.

The fast tests check the trainer pairing and the options the backend refuses; the slow one runs
the whole path on the real nuclei tiles shipped in the package (8 training, 2 test cases) with the
2-epoch smoke trainers: it measures nothing, it checks that the report is complete and that a
second run with the same --work trains nothing again.
"""

from __future__ import annotations

import json
import math

import pytest

from nnunet_plugin.datasets import build_nuclei_tiles, build_synthetic_dataset
from nnunet_plugin.evaluation.compare import WORK_MANIFEST
from nnunet_plugin.evaluation.nnunet_backend import run_comparison_nnunet, scratch_twin, twin_name
from rasd_hub.cli import main
from rasd_hub.errors import RasdValueError

SMOKE_TRAINER = "RaSDTrainerSmall_2epochs_cpu"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_scratch_twin_follows_the_naming_convention_and_must_exist():
    assert twin_name("RaSDTrainerSmall_20epochs_cpu") == "RaSDTrainerSmallFromScratch_20epochs_cpu"
    assert twin_name("RaSDTrainer") == "RaSDTrainerFromScratch"
    assert scratch_twin("RaSDTrainerSmall_2epochs_cpu") == "RaSDTrainerSmallFromScratch_2epochs_cpu"
    assert scratch_twin("RaSDTrainerSGD_20epochs_cpu") == "RaSDTrainerSGDFromScratch_20epochs_cpu"
    with pytest.raises(RasdValueError, match="trains from scratch"):
        scratch_twin("RaSDTrainerSmallFromScratch_20epochs_cpu")
    # nnU-Net's own trainer has no RaSD twin; a typo is not a trainer at all
    for name in ("nnUNetTrainer_RaSDBudget_20epochs_cpu", "RaSDTrainerSmall_20epoch_cpu"):
        with pytest.raises(RasdValueError, match="not a RaSD trainer.*RaSDTrainerSmall_20epochs_cpu"):
            scratch_twin(name)


def test_nnunet_backend_refuses_inprocess_options_and_needs_work(capsys, tmp_path):
    base = ["eval", "compare", "--data", str(tmp_path / "unused"), "--model", "rasd2d_small",
            "--init", "scratch", "--init", "rasd2d_small", "--backend", "nnunet"]
    err = _error(capsys, base + ["--work", str(tmp_path / "w"), "--steps", "10", "--patch", "64", "64"])
    assert "--steps, --patch" in err and "--backend inprocess" in err and "set the budget" in err
    err = _error(capsys, base + ["--work", str(tmp_path / "w"), "--lr", "1e-3"])  # the default value, given
    assert "--lr" in err and "Traceback" not in err
    err = _error(capsys, base)
    assert "--backend nnunet needs --work" in err
    assert not (tmp_path / "w").exists()  # refused before anything was written
    inprocess = base[:-2] + ["--nnunet-trainer", "RaSDTrainerSmall_2epochs_cpu", "--work", str(tmp_path / "w")]
    err = _error(capsys, inprocess)
    assert "--nnunet-trainer: only --backend nnunet uses it" in err


def test_nnunet_backend_refuses_a_work_folder_of_another_comparison(tmp_path):
    from nnunet_plugin.evaluation.data import open_dataset, resolve_split

    dataset = open_dataset(build_synthetic_dataset(tmp_path / "raw", num_cases=4, num_test=2, shape=(32, 32)))
    work = tmp_path / "work"
    work.mkdir()
    (work / WORK_MANIFEST).write_text(json.dumps({"dataset": "elsewhere"}))
    with pytest.raises(RasdValueError, match="holds another comparison"):
        run_comparison_nnunet(dataset, resolve_split(dataset), "rasd2d_small", ["scratch"], [0], work,
                              trainer=SMOKE_TRAINER)
    with pytest.raises(RasdValueError, match="nnU-Net takes cpu, cuda, mps"):
        run_comparison_nnunet(dataset, resolve_split(dataset), "rasd2d_small", ["scratch"], [0], work,
                              trainer=SMOKE_TRAINER, device="cuda:1")


def _training_logs(work) -> list:
    return sorted((work / "nnunet" / "results").rglob("training_log_*.txt"))


def test_planning_holds_the_work_folders_lock(tmp_path, monkeypatch):
    """Processes comparing other inits in one --work plan one at a time: preprocessing runs under
    work/planning.lock (a second holder would read or write a half-preprocessed dataset)."""
    from filelock import FileLock, Timeout

    import nnunet_plugin.commands as commands
    from nnunet_plugin.evaluation.data import open_dataset, resolve_split

    dataset = open_dataset(build_synthetic_dataset(tmp_path / "raw", num_cases=3, num_test=1, shape=(32, 32)))
    work = tmp_path / "work"

    class Planned(Exception):
        pass

    def plan_and_preprocess(*args, **kwargs):
        with pytest.raises(Timeout):
            FileLock(work / "planning.lock").acquire(timeout=0)
        raise Planned

    monkeypatch.setattr(commands, "plan_and_preprocess", plan_and_preprocess)
    with pytest.raises(Planned):
        run_comparison_nnunet(dataset, resolve_split(dataset), "rasd2d_small", ["scratch"], [0], work,
                              trainer=SMOKE_TRAINER)
    FileLock(work / "planning.lock").acquire(timeout=0)  # released on the way out


@pytest.mark.slow
def test_nnunet_backend_end_to_end_on_real_tiles_and_resumes(capsys, tmp_path):
    raw = build_nuclei_tiles(tmp_path / "raw", 506)
    work, out = tmp_path / "work", tmp_path / "report.json"
    argv = ["eval", "compare", "--data", str(raw), "--model", "rasd2d_small", "--init", "scratch",
            "--init", "rasd2d_small", "--seeds", "1", "--backend", "nnunet", "--work", str(work),
            "--nnunet-trainer", SMOKE_TRAINER, "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["backend"] == "nnunet" and report["config"]["trainer"] == SMOKE_TRAINER
    assert report["config"]["scratch_trainer"] == "RaSDTrainerSmallFromScratch_2epochs_cpu"
    assert report["config"]["configuration"] == "2d"
    # scratch trains the plans of the model's own weights: the pre-trained init's plans here
    assert report["config"]["plans"]["scratch"] == report["config"]["plans"]["rasd2d_small"]
    assert set(report["inits"]) == {"scratch", "rasd2d_small"} and report["classes"] == ["nucleus"]
    for init, summary in report["inits"].items():
        (run,) = summary["runs"]
        assert run["seed"] == 0 and set(run["per_case"]) == set(report["split"]["test"])
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in run["per_class"].values())
        assert run["seconds"] > 0 and run["intensity"].startswith("nnU-Net (plans RaSDPlans_")
    assert report["inits"]["scratch"]["source"] == "scratch"
    assert "sha256" in report["inits"]["rasd2d_small"]["source"]
    (pair,) = report["pairs"]
    assert pair["reference"] == "scratch" and pair["init"] == "rasd2d_small" and pair["n"] == 1
    assert "nucleus" in text and "'backend': 'nnunet'" in text  # the table formats
    logs = _training_logs(work)
    assert len(logs) == 2  # one nnU-Net training per init

    assert main(argv + ["--json"]) == 0  # the same --work: nothing trains again
    again = json.loads(capsys.readouterr().out)
    assert _training_logs(work) == logs
    assert again["inits"] == report["inits"] and again["pairs"] == report["pairs"]

    assert main(["eval", "table", str(out)]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert f"| nnU-Net {SMOKE_TRAINER} | 8 / 2 |" in row

    # the plans (and the runs trained on them) name their weights by sha256; when the init names
    # other weights now, nothing kept is reused and nothing trains
    (plans,) = (work / "nnunet").rglob(f"{report['config']['plans']['rasd2d_small']}.json")
    content = json.loads(plans.read_text())
    content["rasd"]["pretrained"]["sha256"] = "0" * 64
    plans.write_text(json.dumps(content))
    err = _error(capsys, argv)
    assert "'rasd2d_small' now names weights with sha256" in err and plans.name in err and "new --work" in err
    assert _training_logs(work) == logs


def test_every_init_must_plan_the_models_network(tmp_path):
    import rasd_hub

    from nnunet_plugin.evaluation.errors import InitError
    from nnunet_plugin.evaluation.nnunet_backend import _check_one_network
    from nnunet_plugin.network import comparable_model_args

    def write_plans(name, **model_kwargs):
        config = rasd_hub.create_model("rasd2d_small", num_classes=3, **model_kwargs).rasd_config
        kwargs = {"rasd_architecture": config["architecture"],
                  "rasd_model_args": comparable_model_args(config["model_args"])}
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"configurations": {"2d": {"architecture": {"arch_kwargs": kwargs}}}}))

    write_plans("same")
    write_plans("narrow", channels=(8, 16, 32, 64, 128))
    _check_one_network(tmp_path, {"scratch": "same", "rasd2d_small": "same"}, "2d", "rasd2d_small", 3)
    with pytest.raises(InitError, match="'narrow_weights' is a rasd2d_small .* one architecture for every init"):
        _check_one_network(tmp_path, {"scratch": "same", "narrow_weights": "narrow"}, "2d", "rasd2d_small", 3)
