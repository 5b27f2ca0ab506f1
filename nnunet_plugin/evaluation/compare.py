"""Run several inits x seeds with one budget and summarise them: the ``rasd eval`` report.

The report (``Report.as_dict()``, what ``--json`` prints) is one JSON object::

    {"dataset", "model", "split": {"source", "train", "test"}, "seeds", "config": {...},
     "device", "classes",
     "inits": {INIT: {"source", "per_seed_mean_dice": [...], "mean", "ci95": [lo, hi],
                      "per_class": {CLASS: {"mean", "ci95", "n"}}, "runs": [RunResult...]}},
     "pairs": [{"init", "reference", "p_value", "mean_difference", "n", "test"}]}

``config`` is the recipe: ``{"backend": "inprocess", "steps", ...}`` (this loop),
``{"backend": "nnunet", "trainer", ...}`` (:mod:`nnunet_plugin.evaluation.nnunet_backend`) or
``{"probe": ...}``.

A comparison given a ``work`` folder keeps each finished run there (``runs/INIT/seed_S.json``,
written atomically, and the predictions ``--pictures`` draws beside it); running it again with
the same folder takes those and trains only what is missing, so a long table can stop and go on.
Both backends use it; the folder's ``comparison.json`` holds what it compares, and another
comparison (dataset, split, model, recipe) is refused rather than mixed in, and so are runs kept
for an init that names other weights now (a weights folder written again: another sha256).

Undefined numbers (a CI from one seed, Dice of a class absent everywhere) are ``null``. Pairs
compare every init with the reference, ``scratch`` when it is among the inits, else the first:
after fine-tuning with a paired t-test over seeds (seed s trains every init on the same patches);
in the frozen-feature probe, where pre-trained weights give one deterministic value, with a
one-sample t-test of scratch's per-seed values against that value (``test`` names which).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from nnunet_plugin.evaluation.data import RawDataset, Split
from nnunet_plugin.evaluation.finetune import (
    FinetuneConfig, RunResult, resolve_device, finetune_and_evaluate, load_split_cases,
)
from nnunet_plugin.evaluation.inits import SCRATCH, build_model, label_sha256
from nnunet_plugin.evaluation.stats import mean_ci, one_sample_test, paired_test
from rasd_hub.errors import RasdValueError


class Recipe(Protocol):
    """What trained a comparison's runs: ``FinetuneConfig`` (the in-process loop) or
    ``nnunet_backend.NnunetRecipe`` (nnU-Net's trainer)."""

    def recipe(self) -> dict[str, Any]: ...

__all__ = ["Report", "run_comparison", "reference_init", "check_inits", "claim_work", "check_kept_weights",
           "name_slug", "WORK_MANIFEST"]

#: what a ``work`` folder must match to be continued (anything else is another comparison)
WORK_MANIFEST = "comparison.json"


def check_inits(inits: Sequence[str]) -> None:
    if not inits or len(set(inits)) != len(inits):
        raise RasdValueError(f"give each --init once (at least one), got {list(inits)}")


def reference_init(inits: Sequence[str]) -> str:
    return SCRATCH if SCRATCH in inits else inits[0]


def name_slug(name: str) -> str:
    """A folder-safe name of its own for an init or weights name (readable tail + hash: a path or
    an hf-hub name has characters folder names should not carry)."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[-32:]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def claim_work(work: Path, identity: dict[str, Any]) -> None:
    """Refuse a ``work`` folder holding another comparison, whose finished runs would otherwise be
    reused silently; record ``identity`` in a new one."""
    from rasd_hub._io import write_json_atomic

    path = work / WORK_MANIFEST
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != identity:
            differ = sorted(k for k in set(identity) | set(theirs) if theirs.get(k) != identity.get(k))
            raise RasdValueError(f"--work {work} holds another comparison (its {', '.join(differ)} "
                                 "differ); give a new --work folder, or the same inputs to continue it")
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, identity)


def check_kept_weights(model: str, init: str, in_chans: int, kept_sha256: str, where: Path) -> None:
    """Refuse what ``where`` kept for ``init`` (a run's record, nnU-Net plans) when ``init`` now
    names other weights (a weights folder written again, a tag's file replaced): those results
    would be reported for weights they never saw. ``kept_sha256``: the sha256 (or its first 12
    digits) of the weights they came from."""
    if init == SCRATCH:
        return
    current = build_model(model, init, num_classes=None, in_chans=in_chans).sha256
    if not kept_sha256 or not current.startswith(kept_sha256):
        raise RasdValueError(
            f"--init {init!r} now names weights with sha256 {current[:12]}, but {where} was made from "
            f"{'sha256 ' + kept_sha256[:12] if kept_sha256 else 'weights it did not record'}; give a new "
            "--work folder to compare these weights, or restore the ones the kept runs used")


@dataclass
class Report:
    dataset: RawDataset
    model: str
    split: Split
    seeds: list[int]
    # what trained every run, or None: the frozen-feature probe (nothing is trained)
    config: Recipe | None
    runs: dict[str, list[RunResult]] = field(default_factory=dict)  # init -> one per seed
    device: str = "auto"

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.foreground_labels.values())

    def per_seed(self, init: str) -> list[float]:
        return [r.mean_dice for r in self.runs[init]]

    def pairs(self) -> list[dict[str, Any]]:
        inits = list(self.runs)
        ref = reference_init(inits)
        out = []
        for init in inits:
            if init == ref:
                continue
            a, b = self.per_seed(ref), self.per_seed(init)
            if any(math.isnan(v) for v in a + b):
                out.append({"init": init, "reference": ref, "p_value": None, "mean_difference": None,
                            "n": len(a), "test": "undefined: a run has no defined Dice"})
                continue
            if self.config is None:  # the frozen-feature probe: nothing was trained
                test = _probe_test(ref, init, a, b)
            else:
                test = paired_test(a, b).as_dict()
            out.append({"init": init, "reference": ref, **test})
        return out

    def init_summary(self, init: str) -> dict[str, Any]:
        runs = self.runs[init]
        values = [v for v in self.per_seed(init) if not math.isnan(v)]
        per_class = {}
        for name in self.class_names:
            defined = [r.per_class[name] for r in runs if not math.isnan(r.per_class[name])]
            per_class[name] = mean_ci(defined).as_dict()
        return {"source": runs[0].source if runs else "",
                "per_seed_mean_dice": [None if math.isnan(v) else v for v in self.per_seed(init)],
                **mean_ci(values).as_dict(), "per_class": per_class,
                "runs": [r.as_dict() for r in runs]}

    def as_dict(self) -> dict[str, Any]:
        if self.config is None:
            recipe = {"probe": "nearest prototype (cosine) on the frozen output embedding"}
        else:
            recipe = self.config.recipe()
        return {
            "dataset": str(self.dataset.folder), "model": self.model,
            "split": {"source": self.split.source, "train": self.split.train,
                      "test": self.split.test, "evaluated_on": self.split.evaluated_on},
            "seeds": self.seeds, "classes": self.class_names,
            "config": recipe,
            "device": _device_label(self.device),
            "inits": {init: self.init_summary(init) for init in self.runs},
            "pairs": self.pairs(),
        }


def _probe_test(reference: str, init: str, a: list[float], b: list[float]) -> dict[str, Any]:
    """``init`` against ``reference`` in the probe. Only a random init (scratch) varies with the
    seed there; pre-trained weights give the same value for every seed, so the test is scratch's
    sample against that fixed value, not a pairing of seeds."""
    if reference == SCRATCH and init != SCRATCH:
        # b repeats one value (the probe of fixed weights is deterministic); its mean is that value
        return one_sample_test(a, sum(b) / len(b)).as_dict()
    return {"p_value": None, "mean_difference": sum(b) / len(b) - sum(a) / len(a), "n": len(a),
            "test": "undefined: both inits are deterministic in the probe, nothing varies to test"}


def _device_label(name: str) -> str:
    import torch

    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_comparison(dataset: RawDataset, split: Split, model: str, inits: Sequence[str],
                   seeds: Sequence[int], config: FinetuneConfig,
                   log: Callable[[str], None] | None = None, keep_predictions: int = 0,
                   work: str | Path | None = None) -> Report:
    """Fine-tune every init with every seed (same data, budget and recipe) and collect results.

    The first seed's runs keep the predictions of the first ``keep_predictions`` test cases. With
    ``work``, finished runs are kept there and taken from there when run again (module docstring)."""
    check_inits(inits)
    train, test = load_split_cases(dataset, split)
    if work is not None:
        work = Path(work)
        claim_work(work, {"dataset": str(Path(dataset.folder).resolve()),
                          "train": list(split.train), "test": list(split.test), "model": model,
                          "config": config.recipe(), "device": resolve_device(config.device).type})
    report = Report(dataset, model, split, list(seeds), config, device=config.device)
    for init in inits:
        report.runs[init] = []
        checked = False  # init's weights against the kept runs', once per init
        for seed in seeds:
            keep = keep_predictions if seed == seeds[0] else 0
            record = None if work is None else work / "runs" / name_slug(init) / f"seed_{seed}.json"
            result = _finished_run(record, keep)
            if result is not None:
                if not checked:
                    check_kept_weights(model, init, dataset.num_channels, label_sha256(result.source), record)
                    checked = True
                if log:
                    log(f"{init} seed {seed}: mean Dice {result.mean_dice:.4f} (done before: {record})")
            else:
                result = finetune_and_evaluate(dataset, train, test, model, init, seed, config, log=log,
                                               keep_predictions=keep)
                if record is not None:
                    _keep_run(record, result)
                if log:
                    log(f"{init} seed {seed}: mean Dice {result.mean_dice:.4f} ({result.seconds:.0f} s)")
            report.runs[init].append(result)
    return report


def _predictions_path(record: Path) -> Path:
    return record.with_suffix(".npz")


def _finished_run(record: Path | None, keep_predictions: int) -> RunResult | None:
    """The run kept at ``record``, or None when it must be trained (not kept, or kept without the
    predictions this run has to keep)."""
    if record is None or not record.is_file():
        return None
    result = RunResult.from_dict(json.loads(record.read_text()))
    if keep_predictions:
        path = _predictions_path(record)
        if not path.is_file():
            return None
        import numpy as np

        with np.load(path) as kept:
            result.predictions = {case: kept[case] for case in kept.files}
    return result


def _keep_run(record: Path, result: RunResult) -> None:
    """Write the run's record atomically; its predictions first, so a record implies them."""
    from rasd_hub._io import atomic_path, write_json_atomic

    if result.predictions:
        import numpy as np

        with atomic_path(_predictions_path(record)) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **result.predictions)
    write_json_atomic(record, result.as_dict())
