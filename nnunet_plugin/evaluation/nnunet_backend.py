"""``rasd eval compare --backend nnunet``: the comparison through nnU-Net's own training and inference.

The same question as the in-process loop (:func:`nnunet_plugin.evaluation.compare.run_comparison`)
answered by the product path: every run is ``nnUNetv2_train`` with a RaSD trainer, then
``nnUNetv2_predict`` of the held-out test cases, scored here with Dice per class. The result is the
same :class:`~nnunet_plugin.evaluation.compare.Report` (runs, pairs, table).

What a comparison does, under ``work`` (its own nnU-Net raw/preprocessed/results folders):

* the split becomes one nnU-Net raw dataset, ``Dataset990_EvalSplit``: the training cases in
  ``imagesTr``/``labelsTr``, the test cases with their labels in ``imagesTs``/``labelsTs``
  (symbolic links to the source files). The id cannot collide with the user's datasets: the raw
  folder under ``work`` holds nothing else;
* nnU-Net plans and preprocesses it (``2d`` for 2D models, ``3d_fullres`` for 3D ones), then
  ``rasd nnunet plan`` writes plans for each pre-trained init's weights under a name of its own;
  ``scratch`` trains the trainer's from-scratch twin on the plans of ``model``'s own weights: the
  same network, patch, batch and input mapping, no weights;
* seed ``s`` is nnU-Net fold ``s`` with ``RASD_SEED=s``: the RaSD trainers seed every epoch from
  both, so seed ``s`` gives every init the same patches and augmentations (the pairing the paired
  test relies on). Every fold of ``splits_final.json`` trains on all of ``split.train`` and
  validates on it too: the held-out test is ``split.test``, predicted after training, and nnU-Net
  needs some validation list (its end-of-training validation is not used);
* linking and planning hold ``work/planning.lock``, so comparisons of different inits may run
  side by side in one ``work`` (one process per init, then one call with every init for the
  report);
* a finished run leaves its predictions and a record (``runs/TRAINER__PLANS/seed_S.json``, written
  atomically); running again with the same ``work`` skips those and trains what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock

from nnunet_plugin.evaluation.compare import Report, check_inits, check_kept_weights, claim_work, name_slug
from nnunet_plugin.evaluation.data import RawDataset, Split, load_case
from nnunet_plugin.evaluation.errors import InitError
from nnunet_plugin.evaluation.finetune import RunResult, check_dimensionality, summarise_cases
from nnunet_plugin.evaluation.inits import SCRATCH, source_label
from rasd_hub.errors import RasdValueError

__all__ = ["DEFAULT_TRAINER", "NnunetRecipe", "twin_name", "scratch_twin", "run_comparison_nnunet"]

DEFAULT_TRAINER = "RaSDTrainerSmall_20epochs_cpu"
DATASET_ID = 990
DATASET_NAME = "EvalSplit"
CONFIGURATIONS = {2: "2d", 3: "3d_fullres"}  # nnU-Net's configuration per network dimensionality
DEVICES = ("cpu", "cuda", "mps")  # what nnUNetv2_train / nnUNetv2_predict accept for -device
# generous: the short CPU trainers take minutes, the full RaSDTrainer (1000 epochs) hours
RUN_TIMEOUT_S = 48 * 3600


@dataclass
class NnunetRecipe:
    """What trained every run of a ``--backend nnunet`` comparison (the report's ``config``)."""

    trainer: str
    scratch_trainer: str
    configuration: str
    plans: dict[str, str] = field(default_factory=dict)  # init -> plans identifier

    def trainer_for(self, init: str) -> str:
        return self.scratch_trainer if init == SCRATCH else self.trainer

    def recipe(self) -> dict[str, Any]:
        return {"backend": "nnunet", "trainer": self.trainer, "scratch_trainer": self.scratch_trainer,
                "configuration": self.configuration, "plans": dict(self.plans),
                "budget": "the nnU-Net trainer's epochs and iterations; patch and batch from the plans"}


def twin_name(trainer: str) -> str:
    """The project's name for a trainer's from-scratch twin: ``FromScratch`` after the class
    name's first part (``RaSDTrainerSmall_20epochs_cpu`` -> ``RaSDTrainerSmallFromScratch_20epochs_cpu``)."""
    base, underscore, variant = trainer.partition("_")
    return f"{base}FromScratch{underscore}{variant}"


def scratch_twin(trainer: str) -> str:
    """The from-scratch twin of the pre-trained RaSD trainer ``trainer`` (:func:`twin_name`),
    checked to exist in :mod:`nnunet_plugin.trainers` as such a pair."""
    from nnunet_plugin import trainers

    def rasd_trainer(name: str, pretrained: bool):
        cls = getattr(trainers, name, None)
        return isinstance(cls, type) and issubclass(cls, trainers.RaSDTrainer) \
            and cls.load_pretrained_weights == pretrained

    pairs = [n for n in trainers.__all__ if rasd_trainer(n, True) and rasd_trainer(twin_name(n), False)]
    hint = f"choose one of {', '.join(pairs)}"
    if rasd_trainer(trainer, False):
        raise RasdValueError(f"--nnunet-trainer {trainer!r} trains from scratch; give the pre-trained "
                             f"trainer (scratch gets its twin): {hint}")
    if not rasd_trainer(trainer, True):
        raise RasdValueError(f"--nnunet-trainer {trainer!r} is not a RaSD trainer of "
                             f"nnunet_plugin.trainers; {hint}")
    twin = twin_name(trainer)
    if not rasd_trainer(twin, False):
        raise RasdValueError(f"--nnunet-trainer {trainer!r} has no from-scratch twin {twin!r} in "
                             f"nnunet_plugin.trainers, so scratch cannot train the same recipe; {hint}")
    return twin


def spatial_dims_of(model: str) -> int:
    import rasd_hub

    architecture, _ = rasd_hub.resolve_weights(model, False, need_weights=False)
    return int(rasd_hub.model_info(architecture)["spatial_dims"])


def plans_name(weights: str) -> str:
    """A plans identifier of its own for each weights name."""
    return f"RaSDPlans_{name_slug(weights)}"


def _link_split(dataset: RawDataset, split: Split, raw_root: Path) -> Path:
    """The split as an nnU-Net raw dataset of links: train -> imagesTr/labelsTr, test ->
    imagesTs/labelsTs (the source files keep their names' case ids and file ending)."""
    from nnunet_plugin.datasets import dataset_folder_name
    from rasd_hub._io import write_json_atomic

    folder = raw_root / dataset_folder_name(DATASET_ID, DATASET_NAME)
    for kind, cases in (("Tr", split.train), ("Ts", split.test)):
        for sub in (f"images{kind}", f"labels{kind}"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for case in cases:
            sources = [*dataset.image_paths(case), dataset.cases[case][1]]
            targets = [folder / f"images{kind}" / p.name for p in sources[:-1]]
            targets.append(folder / f"labels{kind}" / f"{case}{dataset.file_ending}")
            for source, target in zip(sources, targets):
                if not (target.is_symlink() or target.exists()):  # linked by an earlier run
                    target.symlink_to(source.resolve())
    meta = json.loads((dataset.folder / "dataset.json").read_text())
    meta["numTraining"] = len(split.train)  # the rest of the source's dataset.json holds
    write_json_atomic(folder / "dataset.json", meta)
    return folder


def _plans(preprocessed: Path, name: str) -> dict:
    return json.loads((preprocessed / f"{name}.json").read_text())


def _check_one_network(preprocessed: Path, plans: dict[str, str], configuration: str, model: str,
                       num_classes: int) -> None:
    """Every init must train ``model``'s network with its arguments (only the weights differ)."""
    import rasd_hub

    from nnunet_plugin.network import comparable_model_args

    config = rasd_hub.create_model(model, pretrained=False, num_classes=num_classes).rasd_config
    expected = config["architecture"], comparable_model_args(config["model_args"])
    for init, name in plans.items():
        kwargs = _plans(preprocessed, name)["configurations"][configuration]["architecture"]["arch_kwargs"]
        found = kwargs["rasd_architecture"], kwargs["rasd_model_args"]
        if found != expected:
            raise InitError(
                f"--init {init!r} is a {found[0]} with arguments {found[1]}, but --model {model!r} is a "
                f"{expected[0]} with {expected[1]}; a comparison needs one architecture for every init. "
                "Pass --model the weights' architecture (or the weights folder itself).")


def _source(plans: dict, init: str) -> str:
    """The weights a run started from, as the in-process loop labels them."""
    if init == SCRATCH:
        return SCRATCH
    weights = plans["rasd"]["pretrained"]
    return source_label(weights["source"], weights["sha256"])


def run_comparison_nnunet(dataset: RawDataset, split: Split, model: str, inits: Sequence[str],
                          seeds: Sequence[int], work, trainer: str = DEFAULT_TRAINER, device: str = "cpu",
                          log: Callable[[str], None] | None = None) -> Report:
    """Train every init with every seed through ``nnUNetv2_train`` (``trainer``, or its
    from-scratch twin for ``scratch``), predict ``split.test`` with ``nnUNetv2_predict`` and
    collect Dice per class; see the module docstring. ``RunResult.seconds`` is the wall time of
    ``nnUNetv2_train`` (start-up and nnU-Net's final validation included)."""
    from nnunet_plugin.commands import (
        nnunet_environment, plan_and_preprocess, predict_fold, rasd_plan, train_fold, write_splits_final,
    )
    from nnunet_plugin.datasets import prediction_dice
    from nnunet_plugin.pretrained import ENV_VAR as WEIGHTS_VAR
    from nnunet_plugin.trainers import SEED_VAR
    from rasd_hub._io import write_json_atomic

    check_inits(inits)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise RasdValueError(f"seeds must be distinct non-negative integers (each is an nnU-Net fold), got {seeds}")
    if device not in DEVICES:
        raise RasdValueError(f"--device {device!r}: nnU-Net takes {', '.join(DEVICES)} (choose a GPU "
                             "with CUDA_VISIBLE_DEVICES)")
    scratch_trainer = scratch_twin(trainer)
    dims = spatial_dims_of(model)
    check_dimensionality(model, dims, dataset, load_case(dataset, split.train[0]).label.ndim)
    configuration = CONFIGURATIONS[dims]
    work = Path(work)
    claim_work(work, {"dataset": str(Path(dataset.folder).resolve()), "train": list(split.train),
                       "test": list(split.test), "model": model, "configuration": configuration})
    env = nnunet_environment(work / "nnunet")
    env.pop(WEIGHTS_VAR, None)  # it would replace every init's weights with one set
    preprocessed_mark = work / "preprocessed.done"  # nnUNetPlans.json exists before preprocessing ends
    recipe = NnunetRecipe(trainer, scratch_trainer, configuration)
    # comparisons of other inits may share `work` (one process per init): one sets up at a time,
    # so none reads or writes a half-linked or half-preprocessed dataset
    with FileLock(work / "planning.lock"):
        raw = _link_split(dataset, split, Path(env["nnUNet_raw"]))
        preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
        if not preprocessed_mark.exists():
            if log:
                log(f"nnU-Net: planning and preprocessing {len(split.train)} training cases ({configuration})")
            plan_and_preprocess(DATASET_ID, env, configurations=(configuration,), verify=False)
            preprocessed_mark.touch()
        for init in inits:
            weights = model if init == SCRATCH else init  # scratch: the model's own plans, no weights
            recipe.plans[init] = plans_name(weights)
            planned = preprocessed / f"{recipe.plans[init]}.json"
            if not planned.is_file():
                rasd_plan(DATASET_ID, env, weights, "-c", configuration, "--plans-name", recipe.plans[init])
            elif init != SCRATCH:  # plans (and the runs trained on them) name the weights by sha256
                kept = _plans(preprocessed, recipe.plans[init])["rasd"]["pretrained"]["sha256"]
                check_kept_weights(model, init, dataset.num_channels, kept, planned)
        _check_one_network(preprocessed, recipe.plans, configuration, model, dataset.num_classes)
        # fold s trains seed s; every fold trains (and validates) on all training cases. Never fewer
        # folds than there are: a process sharing `work` may be training a higher seed
        splits = preprocessed / "splits_final.json"
        kept_folds = len(json.loads(splits.read_text())) if splits.is_file() else 0
        folds = max(max(seeds) + 1, kept_folds)
        write_splits_final(preprocessed, [{"train": split.train, "val": split.train}] * folds)

    labels = dataset.foreground_labels
    report = Report(dataset, model, split, seeds, recipe, device=device)
    for init in inits:
        report.runs[init] = []
        tr, plans = recipe.trainer_for(init), recipe.plans[init]
        plans_json = _plans(preprocessed, plans)
        mapping = plans_json["configurations"][configuration]["rasd"]["input_mapping"]
        for seed in seeds:
            record = work / "runs" / f"{tr}__{plans}" / f"seed_{seed}.json"
            predictions = work / "predictions" / f"{tr}__{plans}" / f"seed_{seed}"
            if record.is_file() and all((predictions / f"{c}{dataset.file_ending}").is_file() for c in split.test):
                result = RunResult.from_dict(json.loads(record.read_text()))
                if log:
                    log(f"{init} seed {seed}: mean Dice {result.mean_dice:.4f} (done before: {record})")
                report.runs[init].append(result)
                continue
            logs = work / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            seeded = dict(env, **{SEED_VAR: str(seed)})
            seconds = round(train_fold(DATASET_ID, configuration, seed, plans, tr, seeded, device,
                                       RUN_TIMEOUT_S, logs / f"{tr}__{plans}__seed_{seed}.train.txt"), 2)
            predict_fold(DATASET_ID, configuration, seed, plans, tr, raw / "imagesTs", predictions, env, device,
                         RUN_TIMEOUT_S, logs / f"{tr}__{plans}__seed_{seed}.predict.txt")
            dice = prediction_dice(raw / "labelsTs", predictions, labels, dataset.file_ending)
            per_case = {case: {labels[v]: d for v, d in values.items()} for case, values in dice.items()}
            per_class, mean_dice = summarise_cases(per_case, list(labels.values()))
            result = RunResult(init=init, seed=seed, per_class=per_class, mean_dice=mean_dice,
                               per_case=per_case, seconds=seconds, source=_source(plans_json, init),
                               intensity=f"nnU-Net (plans {plans}): " + "; ".join(mapping))
            write_json_atomic(record, result.as_dict())
            if log:
                log(f"{init} seed {seed}: mean Dice {mean_dice:.4f} ({seconds:.0f} s, {tr})")
            report.runs[init].append(result)
    return report
