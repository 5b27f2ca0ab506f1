"""The in-process fine-tuning loop pairs its runs by seed: the paired test over seeds relies on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

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


def test_recipe_schedule_and_bad_values():
    config = finetune.FinetuneConfig(steps=10, warmup_steps=4)
    factors = [config.lr_factor(s) for s in range(10)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and factors[4] == 1.0
    assert all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[-1] > 0
    assert finetune.FinetuneConfig(steps=10).lr_factor(0) == 1.0  # no warm-up: the old poly
    assert config.recipe()["warmup_steps"] == 4
    for bad, match in (({"warmup_steps": 10}, "--warmup-steps"), ({"freeze_encoder_steps": 11}, "--freeze"),
                       ({"encoder_lr_scale": 0}, "--encoder-lr-scale"), ({"new_head": "mlp"}, "--new-head"),
                       ({"precision": "fp16"}, "--precision")):
        with pytest.raises(finetune.RasdValueError, match=match):
            finetune.FinetuneConfig(steps=10, **bad)


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    """``run(**recipe)``: fine-tune pre-trained weights for 2 steps; returns the encoder's and
    the whole network's parameters before and after, the optimiser groups' lrs and the result."""
    dataset = open_dataset(build_synthetic_dataset(tmp_path / "raw", num_cases=2, num_test=1,
                                                   shape=(32, 32)))
    train, test = finetune.load_split_cases(dataset, resolve_split(dataset, None))
    weights = save_random_weights("rasd2d_small", tmp_path / "weights", seed=3)
    seen: dict = {}
    find_encoder = finetune.encoder_parameters

    def spy(model):
        params = find_encoder(model)
        seen["encoder"] = [(p, p.detach().clone()) for p in params]
        seen["all"] = [(p, p.detach().clone()) for p in model.parameters()]
        seen["top_block"] = {k: v.detach().clone() for k, v in model.state_dict().items()
                             if k.startswith("model.2.")}  # the UNet's top up-sampling block
        return params

    monkeypatch.setattr(finetune, "encoder_parameters", spy)
    adamw = torch.optim.AdamW

    def recording_adamw(groups, **kwargs):
        optimiser = adamw(groups, **kwargs)
        seen["lrs"] = [g["lr"] for g in optimiser.param_groups]
        return optimiser

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)

    def run(**recipe):
        config = finetune.FinetuneConfig(steps=2, batch_size=1, device="cpu", **recipe)
        result = finetune.finetune_and_evaluate(dataset, train, test, "rasd2d_small", str(weights), 0, config)
        moved = lambda pairs: sum(not torch.equal(p, before) for p, before in pairs)  # noqa: E731
        return moved(seen["encoder"]), len(seen["encoder"]), moved(seen["all"]), seen["lrs"], result

    run.top_block = lambda: seen["top_block"]  # noqa: E731  the network's output block before training
    run.weights = load_file(str(weights / "model.safetensors"))
    return run


def test_frozen_encoder_and_encoder_learning_rate(small_run):
    moved_encoder, n_encoder, moved_all, lrs, _ = small_run(freeze_encoder_steps=2)
    assert n_encoder > 0 and moved_encoder == 0 and moved_all > 0  # only the decoder trained
    moved_encoder, _, _, lrs, _ = small_run(freeze_encoder_steps=1, encoder_lr_scale=0.1)
    assert moved_encoder > 0 and lrs == pytest.approx([1e-3, 1e-4])  # [rest, encoder]


def test_default_1x1_head_keeps_the_pretrained_output_block(small_run):
    _, _, _, _, result = small_run()
    assert 0 <= result.mean_dice <= 1 and set(result.per_class) == {"blob"}
    top = small_run.top_block()
    assert top and all(torch.equal(v, small_run.weights[k]) for k, v in top.items())
    small_run(new_head="top-block")  # re-initialises that block with one output per class
    assert not any(v.shape == small_run.weights[k].shape and torch.equal(v, small_run.weights[k])
                   for k, v in small_run.top_block().items() if k.endswith("weight"))


def test_bf16_autocast_trains_and_scores_in_bfloat16(small_run, monkeypatch):
    import torch.nn.functional as F

    dtypes = []
    cross_entropy = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, *a, **k: (
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None),
        cross_entropy(logits, *a, **k))[1])
    *_, fp32 = small_run()
    assert dtypes == [None, None]
    dtypes.clear()
    *_, bf16 = small_run(precision="bf16")
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # both steps ran under autocast
    assert np.isfinite(bf16.final_loss) and 0 <= bf16.mean_dice <= 1
    assert bf16.final_loss != fp32.final_loss  # the same patches and weights, other arithmetic


@pytest.mark.parametrize("precision, hint", [("fp32", "lower --lr"), ("bf16", "--precision fp32")])
def test_a_diverged_run_stops_at_that_step_and_says_what_to_change(small_run, monkeypatch, precision, hint):
    losses = []
    real_loss = finetune._loss

    def diverging_at_step_1(logits, target, num_classes):
        losses.append(real_loss(logits, target, num_classes))
        return losses[-1] * float("nan") if len(losses) == 1 else losses[-1]

    monkeypatch.setattr(finetune, "_loss", diverging_at_step_1)
    with pytest.raises(finetune.RasdValueError, match=f"seed 0: the loss became nan at step 1/2; .*{hint}"):
        small_run(precision=precision)
    assert len(losses) == 1  # step 2 never ran
