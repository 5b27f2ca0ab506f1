"""The benchmark datasets: registry volumes as nnU-Net raw datasets with a fixed split.json.

Builds with :mod:`nnunet_plugin.datasets`' builders (fetch from the package index, cache, convert)
and adds ``split.json``: ``train`` = the builder's ``imagesTr`` cases, ``test`` = its labelled
``imagesTs`` cases, ``few_shot`` = nested subsets of 1 and 3 training cases (prefixes of one
fixed shuffle, numpy seed 0), so ``--train-cases 1|3`` picks the same cases on every machine, and
``validation`` = training cases in no few-shot subset, for ``--evaluate-on validation``
(:func:`~nnunet_plugin.evaluation.data.carve_validation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from nnunet_plugin.evaluation.data import FEW_SHOT_SEED, SPLIT_FILE, carve_validation, open_dataset

__all__ = ["BENCHMARKS", "FEW_SHOT", "build_benchmarks", "write_split"]

FEW_SHOT = (1, 3)


def _builders() -> dict[str, Callable]:
    from nnunet_plugin import datasets as d

    return {
        "liver_ct_2d": d.build_liver_ct_2d,  # CT, liver + tumour, 128x128 slices
        "mni_brain_2d": d.build_mni_brain_2d,  # T1 MRI, grey + white matter
        "nuclei_2d": d.build_nuclei_2d,  # fluorescence microscopy, nuclei
        "liver_ct_3d": d.build_liver_ct_3d,  # CT, 32x64x64 blocks: for 3D models
        "nuclei_3d": d.build_nuclei_3d,  # fluorescence, 60x64x64 columns: for 3D models
    }


BENCHMARKS = ("liver_ct_2d", "mni_brain_2d", "nuclei_2d", "liver_ct_3d", "nuclei_3d")


def write_split(folder: str | Path, few_shot: tuple[int, ...] = FEW_SHOT) -> dict:
    """Write ``split.json`` for a dataset whose test cases are its labelled ``imagesTs`` cases."""
    folder = Path(folder)
    (folder / SPLIT_FILE).unlink(missing_ok=True)  # derive from the folders, not an old split
    dataset = open_dataset(folder)
    train = sorted(c for c, (s, _) in dataset.cases.items() if s == "Tr")
    test = sorted(c for c, (s, _) in dataset.cases.items() if s == "Ts")
    order = np.random.default_rng(FEW_SHOT_SEED).permutation(len(train))
    shuffled = [train[i] for i in order]
    subsets = {str(k): shuffled[:k] for k in few_shot if k < len(train)}
    spec = {"train": train, "test": test, "few_shot": subsets,
            "validation": carve_validation(train, subsets),
            "note": "fixed split: test = imagesTs; few_shot = prefixes of a fixed shuffle (seed 0); "
                    "validation = every 5th sorted training case in no few_shot subset (choose "
                    "recipes there; train on the rest)"}
    (folder / SPLIT_FILE).write_text(json.dumps(spec, indent=2))
    return spec


def build_benchmarks(out: str | Path, names=BENCHMARKS, cache_dir=None) -> dict[str, Path]:
    """Build the named benchmark datasets under ``out``; returns name -> dataset folder."""
    builders = _builders()
    folders = {}
    for name in names:
        folder = builders[name](out, cache_dir=cache_dir)
        write_split(folder)
        folders[name] = folder
    return folders
