"""Reading nnU-Net raw datasets and resolving their train/test split (split.json, few-shot)."""

from __future__ import annotations

import json
import shutil

import pytest

from nnunet_plugin.datasets import build_synthetic_dataset
from nnunet_plugin.evaluation.benchmark_data import write_split
from nnunet_plugin.evaluation.data import load_case, open_dataset, resolve_split
from nnunet_plugin.evaluation.errors import DatasetLayoutError, SplitError
from rasd_hub.errors import RasdError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build_synthetic_dataset(tmp_path_factory.mktemp("raw"), num_cases=6, num_test=2,
                                   shape=(32, 32))


def test_reads_cases_and_uses_the_datasets_own_test_cases(synthetic):
    dataset = open_dataset(synthetic)
    assert dataset.num_classes == 2 and dataset.foreground_labels == {1: "blob"}
    split = resolve_split(dataset)
    assert split.train == [f"syn_{i:03d}" for i in range(6)]
    assert split.test == ["syn_006", "syn_007"]
    case = load_case(dataset, "syn_006")
    assert case.image.shape == (1, 32, 32) and case.label.shape == (32, 32)  # 2D, not (1, 32, 32)
    assert set(case.label.ravel().tolist()) <= {0, 1}


def test_split_json_is_honoured(synthetic, tmp_path):
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    (folder / "split.json").write_text(json.dumps(
        {"train": ["syn_001", "syn_006"], "test": ["syn_000"]}))
    split = resolve_split(open_dataset(folder))
    assert (split.train, split.test, split.source) == (["syn_001", "syn_006"], ["syn_000"], "split.json")
    (folder / "split.json").write_text(json.dumps({"train": ["syn_001", "nope"], "test": ["syn_000"]}))
    with pytest.raises(SplitError, match="nope"):
        resolve_split(open_dataset(folder))
    (folder / "split.json").write_text(json.dumps({"train": ["syn_001"], "test": ["syn_001"]}))
    with pytest.raises(SplitError, match="both train and test"):
        resolve_split(open_dataset(folder))


def test_fixed_split_without_test_cases_is_deterministic(synthetic, tmp_path):
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    shutil.rmtree(folder / "labelsTs")  # unlabelled test images are not test cases
    split = resolve_split(open_dataset(folder))
    assert split.test == ["syn_002"] and "syn_002" not in split.train and len(split.train) == 5


def test_few_shot_subsets_are_nested_and_fixed(synthetic, tmp_path):
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    dataset = open_dataset(folder)
    one, three = resolve_split(dataset, 1).train, resolve_split(dataset, 3).train
    assert len(one) == 1 and len(three) == 3 and set(one) <= set(three)
    assert resolve_split(dataset, 3).train == three  # no randomness between calls
    spec = write_split(folder)  # what `rasd eval datasets` writes
    assert spec["few_shot"]["1"] == one and spec["few_shot"]["3"] == three
    assert resolve_split(open_dataset(folder), 3).source.endswith("few_shot[3]")
    with pytest.raises(SplitError, match="has 6 training cases"):
        resolve_split(dataset, 7)
    with pytest.raises(SplitError):
        resolve_split(dataset, 0)


def test_missing_dataset_json_says_what_to_do(synthetic, tmp_path):
    with pytest.raises(DatasetLayoutError, match="no dataset.json") as info:
        open_dataset(synthetic.parent)  # the raw root, not the dataset: names the dataset inside
    assert synthetic.name in str(info.value) and isinstance(info.value, RasdError)
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    (folder / "imagesTr" / "syn_001_0000.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match="syn_001"):
        open_dataset(folder)


def test_validation_split_is_carved_from_training_cases_and_written_into_split_json(synthetic, tmp_path):
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    spec = write_split(folder)
    validation = spec["validation"]
    # training cases in no few-shot subset, so the few-shot runs of the study and of the final
    # table train on the same cases
    assert validation and set(validation) <= set(spec["train"])
    assert not set(validation) & set(spec["few_shot"]["3"])
    dataset = open_dataset(folder)
    for cases in (None, 1, 3):
        on_test = resolve_split(dataset, cases)
        on_validation = resolve_split(dataset, cases, "validation")
        assert on_test.evaluated_on == "test" and on_validation.evaluated_on == "validation"
        assert on_validation.test == validation and not set(on_validation.train) & set(validation)
        if cases is not None:
            assert on_validation.train == on_test.train  # the same few-shot subsets
    assert resolve_split(dataset, None, "validation").train == \
        [c for c in spec["train"] if c not in validation]


def test_validation_split_without_split_json_and_bad_validation_lists(synthetic, tmp_path):
    folder = shutil.copytree(synthetic, tmp_path / synthetic.name)
    split = resolve_split(open_dataset(folder), None, "validation")  # carved by the fixed rule
    assert split.test == ["syn_002"] and "syn_002" not in split.train and "carved" in split.source
    with pytest.raises(SplitError, match="evaluate on 'train'"):
        resolve_split(open_dataset(folder), None, "train")
    base = {"train": ["syn_000", "syn_001", "syn_002"], "test": ["syn_006"], "few_shot": {"1": ["syn_000"]}}
    for validation, message in ((["syn_006"], "must be training cases"),
                                (["syn_000"], "also in a few-shot subset"),
                                (["syn_000", "syn_001", "syn_002"], "also in a few-shot subset")):
        (folder / "split.json").write_text(json.dumps({**base, "validation": validation}))
        with pytest.raises(SplitError, match=message):
            resolve_split(open_dataset(folder), None, "validation")
    (folder / "split.json").write_text(json.dumps({**base, "few_shot": {}, "validation": base["train"]}))
    with pytest.raises(SplitError, match="nothing is left to train on"):
        resolve_split(open_dataset(folder), None, "validation")
    (folder / "split.json").write_text(json.dumps({**base, "few_shot": {"3": base["train"]}}))
    with pytest.raises(SplitError, match="no training case is left for validation"):
        resolve_split(open_dataset(folder), None, "validation")
