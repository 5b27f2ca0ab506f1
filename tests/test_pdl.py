"""PDL loss: agrees with an obvious loop implementation, handles absent classes, trains."""

import math

import pytest
import torch

from pretraining.pdl import PDLConfig, PDLLoss, class_prototypes, pdl_loss, prototype_assignments


def reference_pdl(features, labels, num_classes, config):
    """Slow, literal eqs. 5-7: Python loops over samples, classes and pixels, float64."""
    features = features.double()
    batch, channels = features.shape[:2]
    separations, clusterings = [], []
    for b in range(batch):
        f = features[b].reshape(channels, -1)
        y = labels[b].reshape(-1)
        if config.normalize:
            f = f / f.norm(dim=0, keepdim=True).clamp(min=1e-12)
        present = [i for i in range(num_classes) if (y == i).any()]
        protos = {}
        for i in present:
            p = f[:, y == i].mean(dim=1)
            if config.normalize:
                p = p / p.norm().clamp(min=1e-12)
            protos[i] = p
        sep_terms = []
        for i in present:
            logits = [protos[i] @ protos[j] / config.temperature for j in present]
            own = protos[i] @ protos[i] / config.temperature
            sep_terms.append(-(own - torch.logsumexp(torch.stack(logits), 0)))
        separations.append(torch.stack(sep_terms).mean())
        pixel_terms = []
        for n in range(f.shape[1]):
            logits = torch.stack([protos[j] @ f[:, n] / config.temperature for j in present])
            own = protos[int(y[n])] @ f[:, n] / config.temperature
            pixel_terms.append(-(own - torch.logsumexp(logits, 0)))
        clusterings.append(torch.stack(pixel_terms).mean())
    separation = torch.stack(separations).mean()
    clustering = torch.stack(clusterings).mean()
    if config.scale_by_num_classes:
        separation, clustering = separation / num_classes, clustering / num_classes
    loss = config.separation_weight * separation + config.clustering_weight * clustering
    return loss, separation, clustering


def random_batch(shape, channels, num_classes, seed, drop_class=None):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn((shape[0], channels, *shape[1:]), generator=gen) * 0.5
    labels = torch.randint(0, num_classes, shape, generator=gen)
    if drop_class is not None:  # the class is absent from sample 0 only
        sample0 = labels[0]
        sample0[sample0 == drop_class] = (drop_class + 1) % num_classes
    return features, labels


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("shape", [(3, 6, 5), (2, 3, 4, 3)])
def test_matches_loop_reference(normalize, scale, shape):
    config = PDLConfig(normalize=normalize, scale_by_num_classes=scale,
                       separation_weight=0.7, clustering_weight=1.3)
    features, labels = random_batch(shape, channels=4, num_classes=5, seed=1, drop_class=2)
    out = pdl_loss(features, labels, 5, config)
    ref = reference_pdl(features, labels, 5, config)
    for got, want in zip(out, ref):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_module_wrapper_and_defaults():
    assert PDLConfig().temperature == 0.07
    assert not PDLConfig().normalize and PDLConfig().scale_by_num_classes
    features, labels = random_batch((2, 8, 8), 3, 4, seed=2)
    torch.testing.assert_close(PDLLoss(4)(features, labels).loss, pdl_loss(features, labels, 4).loss)
    with pytest.raises(ValueError):
        PDLConfig(temperature=0)


def test_absent_class_changes_nothing():
    # classes {0, 1, 3} of 4 give the same loss as the same map relabelled to {0, 1, 2} of 3
    features, labels = random_batch((2, 6, 6), 4, 3, seed=3)
    with_gap = labels.clone()
    with_gap[labels == 2] = 3
    config = PDLConfig(scale_by_num_classes=False)
    a = pdl_loss(features, labels, 3, config)
    b = pdl_loss(features, with_gap, 4, config)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    # and in the default (scaled) form only the 1/I factor differs
    torch.testing.assert_close(pdl_loss(features, with_gap, 4).loss * 4,
                               pdl_loss(features, labels, 3).loss * 3)


def test_single_class_sample_and_zero_features_are_finite():
    features = torch.zeros(2, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1, :2] = 1
    out = pdl_loss(features, labels, 8)
    out.loss.backward()
    assert all(torch.isfinite(t) for t in out)
    assert torch.isfinite(features.grad).all()
    # a sample with one class has nothing to separate: its separation term is exactly zero
    sep_only = pdl_loss(features[:1], labels[:1], 8).separation
    assert sep_only.item() == 0.0


@pytest.mark.parametrize("normalize", [False, True])
def test_gradients_are_finite_nonzero_and_per_sample(normalize):
    config = PDLConfig(normalize=normalize)
    features, labels = random_batch((2, 6, 6), 4, 5, seed=4, drop_class=1)
    features.requires_grad_(True)
    pdl_loss(features, labels, 5, config).loss.backward()
    grad = features.grad.clone()
    assert torch.isfinite(grad).all()
    # every pixel takes part in the clustering term, so none has a zero gradient
    assert (grad.abs().sum(dim=1) > 0).all()
    # samples do not interact: changing sample 1 leaves sample 0's gradient alone
    other = features.detach().clone()
    other[1] = torch.randn_like(other[1])
    other.requires_grad_(True)
    pdl_loss(other, labels, 5, config).loss.backward()
    torch.testing.assert_close(other.grad[0], grad[0])
    assert not torch.allclose(other.grad[1], grad[1])


def test_term_weights_switch_terms_off():
    features, labels = random_batch((2, 5, 5), 3, 4, seed=5)
    features.requires_grad_(True)
    out = pdl_loss(features, labels, 4, PDLConfig(separation_weight=0.0, clustering_weight=0.0))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.separation.item() > 0 and out.clustering.item() > 0
    assert (features.grad == 0).all()


def test_bf16_autocast_reduces_in_fp32():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 3, padding=1)
    image = torch.randn(2, 1, 16, 16)
    labels = torch.randint(0, 4, (2, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(image)
        assert features.dtype == torch.bfloat16
        out = pdl_loss(features, labels, 4)
    assert out.loss.dtype == torch.float32
    reference = pdl_loss(features.float(), labels, 4)
    torch.testing.assert_close(out.loss, reference.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, padding=1)
    )
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 8:] = 1
    labels[:, :, 8:] += 2
    image = labels.unsqueeze(1).float() / 3 + 0.05 * torch.randn(2, 1, 16, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = pdl_loss(net(image), labels, 4).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert math.isfinite(losses[-1])


def test_prototype_assignments_recover_separable_features():
    labels = torch.randint(0, 3, (2, 6, 7))
    labels[1][labels[1] == 2] = 0  # class 2 absent from sample 1: never assigned there
    features = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 5
    assigned = prototype_assignments(features, labels, 3)
    assert torch.equal(assigned, labels)
    protos, present = class_prototypes(features, labels, 3)
    assert protos.shape == (2, 3, 3) and present[1].tolist() == [True, True, False]
