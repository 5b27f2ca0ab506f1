"""Read an nnU-Net raw dataset and its fixed train/test split.

Layout (nnU-Net v2): ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
``imagesTr/{case}_{channel:04d}{ending}``, ``labelsTr/{case}{ending}``, and optionally
``imagesTs``/``labelsTs`` (test cases with reference labels, as :mod:`nnunet_plugin.datasets`'
builders write them). Images are NIfTI (2D datasets store one slice per case, as nnU-Net does) or
PNG.

Which cases are training and test cases (:func:`resolve_split`), in order of precedence:

1. ``split.json`` in the dataset folder: ``{"train": [...], "test": [...]}`` and optionally
   ``"few_shot": {"1": [...], "3": [...]}`` and ``"validation": [...]``; ids may live in ``*Tr``
   or ``*Ts``;
2. the dataset's own split: every labelled case in ``labelsTs`` is a test case, ``*Tr`` trains;
3. otherwise a fixed deterministic split of the ``*Tr`` cases: sorted ids, every 5th one
   (starting with the 3rd) is a test case, interleaved so that slices of one volume cover both.

Few-shot subsets (``--train-cases N``) are ``few_shot[N]`` when split.json states it, else the
first N of the training cases in a fixed shuffled order (numpy seed 0, independent of the
training seeds), so 1 is inside 3 is inside all, and every init and seed sees the same cases.

The validation split (``evaluate_on="validation"``, for choosing recipes without touching the
test cases) scores on validation cases carved out of the training cases: split.json's
``validation`` when stated, else :func:`carve_validation` (every 5th of the sorted training cases
that no few-shot subset uses). Training then uses the few-shot subset as before (it never holds a
validation case) or, for all cases, the training cases minus the validation cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_plugin.datasets import interleaved_split
from nnunet_plugin.evaluation.errors import DatasetLayoutError, SplitError

__all__ = ["RawDataset", "Split", "Case", "open_dataset", "resolve_split", "load_case",
           "carve_validation", "EVALUATE_ON"]

SPLIT_FILE = "split.json"
#: one test case in every TEST_EVERY sorted training cases when nothing states a split
TEST_EVERY = 5
FEW_SHOT_SEED = 0
#: what a comparison scores on: the held-out test cases, or validation cases carved from training
EVALUATE_ON = ("test", "validation")


@dataclass
class RawDataset:
    """An nnU-Net raw dataset on disk: where its cases are and what they contain."""

    folder: Path
    channel_names: dict[str, str]
    labels: dict[str, int]  # name -> value, background 0 included
    file_ending: str
    cases: dict[str, tuple[str, Path]] = field(repr=False)  # id -> ("Tr"|"Ts", label path)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {v: k for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0}

    def image_paths(self, case_id: str) -> list[Path]:
        split, _ = self.cases[case_id]
        return [self.folder / f"images{split}" / f"{case_id}_{c:04d}{self.file_ending}"
                for c in range(self.num_channels)]


@dataclass
class Split:
    train: list[str]
    test: list[str]  # the cases scored: test cases, or validation cases (``evaluated_on``)
    source: str  # where the split came from, reported with every result
    evaluated_on: str = "test"


@dataclass
class Case:
    """One case in memory: ``image`` (C, *spatial) float32, ``label`` (*spatial) int64."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


def open_dataset(folder: str | Path) -> RawDataset:
    """Index an nnU-Net raw dataset (reads dataset.json and lists the labelled cases)."""
    folder = Path(folder).expanduser()
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        hint = ""
        if folder.is_dir():
            inner = sorted(p.name for p in folder.glob("Dataset*") if (p / "dataset.json").is_file())
            if inner:
                hint = f" It contains the datasets {', '.join(inner)}: pass one of those to --data."
        raise DatasetLayoutError(
            f"{folder} has no dataset.json, so it is not an nnU-Net raw dataset.{hint} Build the "
            "benchmark datasets with `rasd eval datasets --out DIR`, or see nnU-Net's "
            "dataset_format.md for the layout (imagesTr/, labelsTr/, dataset.json).")
    try:
        meta = json.loads(meta_path.read_text())
        channel_names = {str(k): str(v) for k, v in meta["channel_names"].items()}
        labels = {str(k): int(v) for k, v in meta["labels"].items()}
        ending = str(meta["file_ending"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DatasetLayoutError(
            f"{meta_path} is not a valid nnU-Net dataset.json ({type(err).__name__}: {err}); it "
            "needs channel_names, labels (with background: 0) and file_ending.") from None
    if 0 not in labels.values():
        raise DatasetLayoutError(f"{meta_path}: labels must include background: 0")
    cases: dict[str, tuple[str, Path]] = {}
    for split in ("Tr", "Ts"):
        for label_path in sorted((folder / f"labels{split}").glob(f"*{ending}")):
            case_id = label_path.name[: -len(ending)]
            cases.setdefault(case_id, (split, label_path))
    dataset = RawDataset(folder, channel_names, labels, ending, cases)
    if not any(s == "Tr" for s, _ in cases.values()):
        raise DatasetLayoutError(f"{folder}/labelsTr holds no *{ending} labels: nothing to train on.")
    for case_id in cases:
        missing = [p.name for p in dataset.image_paths(case_id) if not p.is_file()]
        if missing:
            raise DatasetLayoutError(
                f"case {case_id} has a label but no image file(s) {', '.join(missing)}; every case "
                f"needs one image per channel in dataset.json ({dataset.num_channels}).")
    return dataset


def _fixed_split(ids: Sequence[str]) -> tuple[list[str], list[str]]:
    return interleaved_split(sorted(ids), TEST_EVERY)


def carve_validation(train: Sequence[str], few_shot: dict[str, list[str]]) -> list[str]:
    """Validation cases out of ``train``: every 5th (the middle one) of the sorted training cases
    that are in no few-shot subset, at least one; empty when no such case exists."""
    used = set(sum(few_shot.values(), []))
    pool = sorted(c for c in train if c not in used)
    _, validation = _fixed_split(pool)
    return validation or pool[len(pool) // 2: len(pool) // 2 + 1]


def resolve_split(dataset: RawDataset, train_cases: int | None = None,
                  evaluate_on: str = "test") -> Split:
    """The dataset's train/test split (see the module docstring), with ``train_cases`` training
    cases when given (``None`` = all); ``evaluate_on="validation"`` scores validation cases
    carved from the training cases instead of the test cases."""
    if evaluate_on not in EVALUATE_ON:
        raise SplitError(f"evaluate on {evaluate_on!r}? choose one of {', '.join(EVALUATE_ON)}")
    split_path = dataset.folder / SPLIT_FILE
    few_shot: dict[str, list[str]] = {}
    validation: list[str] | None = None
    if split_path.is_file():
        try:
            spec = json.loads(split_path.read_text())
            train, test = [str(c) for c in spec["train"]], [str(c) for c in spec["test"]]
            few_shot = {str(k): [str(c) for c in v] for k, v in spec.get("few_shot", {}).items()}
            if "validation" in spec:
                validation = [str(c) for c in spec["validation"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SplitError(f"{split_path} must be {{\"train\": [ids], \"test\": [ids]}} "
                             f"({type(err).__name__}: {err})") from None
        unknown = sorted(set(train + test + sum(few_shot.values(), []) + (validation or []))
                         - set(dataset.cases))
        if unknown:
            raise SplitError(f"{split_path} names cases with no label file: {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}; fix the ids or the dataset.")
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise SplitError(f"{split_path}: cases in both train and test: {', '.join(overlap[:5])}")
        source = SPLIT_FILE
    else:
        ts = [c for c, (s, _) in dataset.cases.items() if s == "Ts"]
        tr = [c for c, (s, _) in dataset.cases.items() if s == "Tr"]
        if ts:
            train, test, source = sorted(tr), sorted(ts), "imagesTr/imagesTs"
        else:
            train, test = _fixed_split(tr)
            source = f"fixed: every {TEST_EVERY}th sorted case is a test case"
    if not test:
        raise SplitError(f"{dataset.folder}: the split has no test cases; add some to split.json "
                         "or labelsTs.")
    if not train:
        raise SplitError(f"{dataset.folder}: the split has no training cases.")
    if evaluate_on == "validation":
        train, test, source = _validation_split(dataset, train, few_shot, validation, source)
    if train_cases is not None:
        if train_cases < 1 or train_cases > len(train):
            raise SplitError(
                f"--train-cases {train_cases}: this split has {len(train)} training cases; choose "
                f"1..{len(train)} (or leave it out for all).")
        if str(train_cases) in few_shot:
            train = few_shot[str(train_cases)]
            source += f", few_shot[{train_cases}]"
        else:
            order = np.random.default_rng(FEW_SHOT_SEED).permutation(len(train))
            train = [train[i] for i in order[:train_cases]]
            source += f", first {train_cases} of a fixed shuffle (seed {FEW_SHOT_SEED})"
    return Split(list(train), list(test), source, evaluate_on)


def _validation_split(dataset: RawDataset, train: list[str], few_shot: dict[str, list[str]],
                      validation: list[str] | None, source: str):
    """(training cases without the validation cases, validation cases, source)."""
    where = f"{dataset.folder / SPLIT_FILE}"
    if validation is None:
        validation = carve_validation(train, few_shot)
        source += ", validation carved from the training cases (every 5th unused by few-shot)"
    else:
        source += ", split.json's validation"
        outside = sorted(set(validation) - set(train))
        if outside:
            raise SplitError(f"{where}: validation cases must be training cases; not in train: "
                             f"{', '.join(outside[:5])}")
    if not validation:
        raise SplitError(f"{dataset.folder}: no training case is left for validation (every one is "
                         "in a few-shot subset); add training cases or a validation list to "
                         "split.json.")
    clash = sorted(set(validation) & set(sum(few_shot.values(), [])))
    if clash:
        raise SplitError(f"{where}: validation cases also in a few-shot subset: "
                         f"{', '.join(clash[:5])}; a case cannot train and validate one run.")
    held_out = set(validation)
    rest = [c for c in train if c not in held_out]
    if not rest:
        raise SplitError(f"{dataset.folder}: every training case is a validation case; nothing "
                         "is left to train on.")
    return rest, list(validation), source


def _read_array(path: Path) -> np.ndarray:
    """(z, y, x) or (y, x) array of a NIfTI/PNG file; a one-slice volume becomes 2D."""
    name = path.name.lower()
    try:
        if name.endswith((".png", ".bmp", ".tif", ".tiff", ".jpg")):
            from PIL import Image

            array = np.asarray(Image.open(path))
            if array.ndim == 3:  # RGB(A) label or image stored as colour: use the first channel
                array = array[..., 0]
            return array
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except Exception as err:  # any reader failure is a dataset problem the user must fix
        raise DatasetLayoutError(f"cannot read {path}: {err}") from None
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def load_case(dataset: RawDataset, case_id: str) -> Case:
    """Read one case into memory and check that its channels and label have one shape."""
    channels = [_read_array(p).astype(np.float32) for p in dataset.image_paths(case_id)]
    label = _read_array(dataset.cases[case_id][1])
    shapes = {c.shape for c in channels} | {label.shape}
    if len(shapes) != 1:
        raise DatasetLayoutError(f"case {case_id}: image channels and label differ in shape {shapes}")
    if label.min() < 0 or label.max() >= dataset.num_classes:
        raise DatasetLayoutError(
            f"case {case_id}: label values {int(label.min())}..{int(label.max())} are outside "
            f"dataset.json's labels 0..{dataset.num_classes - 1}")
    return Case(case_id, np.stack(channels), label.astype(np.int64))
