"""Classification heads (encoder + global pooling + linear layer), 2D and 3D, and the AUC
comparison behind `rasd eval classify`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import rasd_hub
from nnunet_plugin.normalization import NnUNetNormalization
from rasd_hub.errors import RasdValueError


@pytest.mark.parametrize("name", ["rasd2d_small", "rasd3d_small"])
def test_classifier_head_on_the_pretrained_encoder(name, tmp_path):
    torch.manual_seed(0)
    clf = rasd_hub.create_model(name, pretrained=True, num_classes=3, head="classifier").eval()
    enc = rasd_hub.create_model(name, pretrained=True, features_only=True)
    dims = clf.pretrained_cfg.spatial_dims
    x = torch.rand(2, 1, *(32,) * dims)
    with torch.no_grad():
        logits = clf(x)
        pooled = clf.forward_head(clf.forward_features(x), pre_logits=True)
    assert logits.shape == (2, 3) and pooled.shape == (2, enc.feature_info.channels(-1))
    assert clf.num_classes == 3 and clf.num_features == enc.feature_info.channels(-1)
    # the encoder holds exactly the pre-trained weights; only the linear layer is new
    ours = {k[len("encoder."):]: v for k, v in clf.state_dict().items() if k.startswith("encoder.")}
    assert ours.keys() == enc.state_dict().keys()
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in ours.items())
    assert set(clf.state_dict()) - {"encoder." + k for k in ours} == {"fc.weight", "fc.bias"}
    cfg = clf.pretrained_cfg
    assert cfg.head == "classifier" and cfg.classifier == "fc" and cfg.num_classes == 3
    assert cfg.source == enc.pretrained_cfg.source and cfg.sha256 == enc.pretrained_cfg.sha256
    assert all(k in clf.state_dict() for k in cfg.first_conv)
    # saved and loaded back: the same classifier
    rasd_hub.save_pretrained(clf, tmp_path / "clf")
    back = rasd_hub.load(tmp_path / "clf").eval()
    with torch.no_grad():
        assert torch.allclose(back(x), logits, atol=1e-6)
    assert rasd_hub.load(tmp_path / "clf", num_classes=5).num_classes == 5  # fresh head
    # timm's head helpers
    clf.reset_classifier(4)
    assert clf(x).shape == (2, 4)
    clf.reset_classifier(0)
    assert clf(x).shape == (2, enc.feature_info.channels(-1)) and clf.num_classes == 0
    assert len(clf.forward_intermediates(x, indices=2, intermediates_only=True)) == 2


def test_classifier_arguments_are_checked():
    with pytest.raises(RasdValueError, match="needs num_classes"):
        rasd_hub.create_model("rasd2d_small", head="classifier")
    with pytest.raises(RasdValueError, match="exclude each other"):
        rasd_hub.create_model("rasd2d_small", head="classifier", num_classes=2, features_only=True)
    with pytest.raises(RasdValueError, match="head='pool'"):
        rasd_hub.create_model("rasd2d_small", head="pool", num_classes=2)


def test_roc_auc_is_the_fraction_of_correctly_ordered_pairs():
    from nnunet_plugin.evaluation.classify import roc_auc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounded: ties count one half
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0 and roc_auc([0.9, 0.1], [0, 1]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def test_classify_compare_pairs_inits_over_seeds(monkeypatch):
    """On a task a linear probe solves (bright square or not), both inits learn it; the report
    pairs them by seed."""
    from nnunet_plugin.evaluation import classify

    rng = np.random.default_rng(0)

    def toy(n):
        y = rng.integers(0, 2, n)
        x = rng.random((n, 1, 32, 32)).astype(np.float32) * 0.2
        x[y == 1, :, 8:24, 8:24] += 0.8
        return x, y

    (trx, tr_y), (tex, te_y) = toy(64), toy(64)
    normalization = NnUNetNormalization(["toy"], ["ZScoreNormalization"], [{}])
    monkeypatch.setitem(classify.TASKS, "tiles2d", lambda cache_dir=None: classify.TileTask(
        trx, tr_y, tex, te_y, "toy", normalization))
    report = classify.classify_compare("rasd2d_small", ["scratch", "rasd2d_small"], seeds=2, epochs=2, batch=16)
    assert report["task"] == "toy" and report["seeds"] == 2
    scratch, pre = report["results"]["scratch"], report["results"]["rasd2d_small"]
    assert len(scratch["auc"]) == len(pre["auc"]) == 2
    assert "sha256" in pre["weights"] and scratch["weights"] == "scratch"
    # the shipped weights' measured moments, mapped by the network as RaSDTrainer maps them
    assert "0.2405 * x + 0.465" in pre["intensity"]
    assert pre["vs_scratch"]["n"] == 2
    assert min(scratch["auc"] + pre["auc"]) > 0.9
