"""The in-process fine-tuning loop pairs its runs by seed: the paired test over seeds relies on it."""

from __future__ import annotations

import numpy as np
import pytest

from nnunet_plugin.commands import save_random_weights
from nnunet_plugin.datasets import build_synthetic_dataset
from nnunet_plugin.evaluation import finetune
from nnunet_plugin.evaluation.data import open_dataset, resolve_split

# other measured moments than the shipped weights: another input mapping, the same patches
OTHER_NORMALIZATION = {"method": "minmax", "range": [0.0, 1.0], "mean": 0.4, "std": 0.3}


@pytest.fixture
def drawn_batches(tmp_path, monkeypatch):
    """``draw(init, seed)``: the (images, labels) batches the loop trains ``init`` on with ``seed``."""
    dataset = open_dataset(build_synthetic_dataset(tmp_path / "raw", num_cases=2, num_test=1,
                                                   shape=(32, 32)))
    train, test = finetune.load_split_cases(dataset, resolve_split(dataset, None))
    config = finetune.FinetuneConfig(steps=3, batch_size=2, device="cpu")
    record: list = []
    draw_batch = finetune.PatchSampler.batch

    def recording_batch(self, size):
        images, labels = draw_batch(self, size)
        record.append((images.copy(), labels.copy()))
        return images, labels

    monkeypatch.setattr(finetune.PatchSampler, "batch", recording_batch)

    def draw(init: str, seed: int) -> list:
        record.clear()
        finetune.finetune_and_evaluate(dataset, train, test, "rasd2d_small", init, seed, config)
        return list(record)

    return draw, tmp_path


def test_seed_gives_every_init_the_same_patches_and_augmentations(drawn_batches):
    draw, tmp_path = drawn_batches
    weights = save_random_weights("rasd2d_small", tmp_path / "weights", seed=3,
                                  normalization=OTHER_NORMALIZATION)
    # scratch draws every initial weight from torch's generator, the weights only a new head:
    # the patch stream must not depend on how much of it the model consumed, nor on the mapping
    scratch, pretrained, other_seed = draw("scratch", 0), draw(str(weights), 0), draw("scratch", 1)
    assert len(scratch) == len(pretrained) == 3
    for (x_scratch, y_scratch), (x_pre, y_pre) in zip(scratch, pretrained):
        assert np.array_equal(x_scratch, x_pre) and np.array_equal(y_scratch, y_pre)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(scratch, other_seed))
