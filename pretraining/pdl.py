"""Prototype disentangling learning (PDL), equations 5-7 of the RaSD paper.

Given dense features ``f`` of shape ``(B, C, *spatial)`` from an encoder-decoder and an integer label
map ``y`` of shape ``(B, *spatial)`` with ``I`` classes:

* prototypes (eq. 5): ``P_i`` is the mean of ``f`` over the pixels of class ``i`` of one sample;
* separation (eq. 6): every prototype must be recognised among the prototypes of its sample, a
  softmax cross-entropy over the prototype-prototype similarities ``P_i . P_j / tau``;
* clustering (eq. 7): every pixel must be recognised by its class prototype, a softmax
  cross-entropy over the prototype-pixel similarities ``P_j . f / tau``.

Reductions, matching the released code when every class is present: the separation term is the
mean over a sample's prototypes, the clustering term the mean over its pixels, both averaged over
the batch, and (``scale_by_num_classes``) multiplied by ``1/I``. The paper writes eq. 6 as a sum
over ``i``; a sum is ``I`` times the mean, so the choice only rescales the term (and the gradient,
which matters for a fixed learning rate such as the paper's 1e-5).

A class that does not occur in a sample has no prototype there: it is left out of both terms of that
sample (neither a row nor a column of the separation logits, not a candidate in the clustering
softmax), so nothing divides by zero and the loss does not depend on it. All reductions run in
float32 with autocast disabled, whatever precision the network ran in.

Everything is vectorised over the batch and the classes: prototypes come from one einsum with the
one-hot labels, so the cost is two batched matrix products and two log-sum-exps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "PDLConfig",
    "PDLOutput",
    "pdl_loss",
    "PDLLoss",
    "class_prototypes",
    "prototype_assignments",
]


@dataclass(frozen=True)
class PDLConfig:
    """Settings of the PDL loss.

    Defaults reproduce the released implementation (raw dot products, ``1/I`` scaling); the paper's
    text allows cosine similarities and an unscaled sum, hence the switches.
    """

    temperature: float = 0.07
    """tau of eqs. 6 and 7 (paper and released code: 0.07)."""
    separation_weight: float = 1.0
    """weight of the prototype separation term (eq. 6)."""
    clustering_weight: float = 1.0
    """weight of the prototype-to-pixel clustering term (eq. 7)."""
    normalize: bool = False
    """L2-normalise pixel features and prototypes (cosine similarity). False: raw dot products, as
    in the released code; then feature magnitudes act as an inverse temperature."""
    scale_by_num_classes: bool = True
    """multiply the loss by ``1/I`` (I = configured number of classes), as the released code's
    mean over the one-hot class axis does. False: no scaling."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"PDL temperature must be positive, got {self.temperature}")
        if self.separation_weight < 0 or self.clustering_weight < 0:
            raise ValueError("PDL term weights must be non-negative")


class PDLOutput(NamedTuple):
    """The weighted total and its two (unweighted, scaled) terms, each a 0-d float32 tensor."""

    loss: torch.Tensor
    separation: torch.Tensor
    clustering: torch.Tensor


def _flatten(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dim() < 3:
        raise ValueError(f"features must be (B, C, *spatial), got shape {tuple(features.shape)}")
    if labels.shape != features.shape[:1] + features.shape[2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must be (B, *spatial) matching features "
            f"{tuple(features.shape)}"
        )
    batch, channels = features.shape[:2]
    return features.reshape(batch, channels, -1), labels.reshape(batch, -1).long()


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-mean prototypes (eq. 5).

    Returns ``prototypes`` of shape ``(B, I, C)`` (float32; zero for an absent class) and
    ``present``, a bool ``(B, I)`` mask of the classes that occur in each sample.
    """
    flat, flat_labels = _flatten(features, labels)
    flat = flat.float()
    if normalize:
        flat = F.normalize(flat, dim=1)
    return _prototypes(flat, flat_labels, num_classes, normalize)


def _prototypes(flat, flat_labels, num_classes, normalize):
    one_hot = F.one_hot(flat_labels, num_classes).to(flat.dtype)  # (B, N, I)
    counts = one_hot.sum(dim=1)  # (B, I)
    sums = torch.einsum("bni,bcn->bic", one_hot, flat)
    present = counts > 0
    # clamp: an absent class has a zero sum, so its prototype is 0 rather than 0/0
    prototypes = sums / counts.clamp(min=1).unsqueeze(-1)
    if normalize:
        prototypes = F.normalize(prototypes, dim=-1)
    return prototypes, present


def pdl_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: PDLConfig = PDLConfig(),
) -> PDLOutput:
    """PDL loss of a batch of dense ``features`` ``(B, C, *spatial)`` with ``labels``
    ``(B, *spatial)`` in ``[0, num_classes)``. See the module docstring for the definition."""
    device_type = features.device.type
    # Reductions over up to 128^3 pixels: float32 even when the network runs under bf16 autocast.
    with torch.autocast(device_type=device_type, enabled=False):
        flat, flat_labels = _flatten(features, labels)
        flat = flat.float()
        if normalize := config.normalize:
            flat = F.normalize(flat, dim=1)
        prototypes, present = _prototypes(flat, flat_labels, num_classes, normalize)
        tau = config.temperature
        absent_column = ~present.unsqueeze(1)  # (B, 1, I): mask for softmax candidates

        # eq. 6: row i = prototype i against all prototypes j of the same sample
        proto_logits = torch.einsum("bic,bjc->bij", prototypes, prototypes) / tau
        proto_logits = proto_logits.masked_fill(absent_column, float("-inf"))
        own = torch.diagonal(proto_logits, dim1=1, dim2=2)  # (B, I); -inf where absent
        separation_per_class = torch.logsumexp(proto_logits, dim=2) - own
        # where, not multiply: an absent row holds inf - inf, which a zero weight would keep as NaN
        separation_per_class = torch.where(present, separation_per_class, 0.0)
        separation = (separation_per_class.sum(1) / present.sum(1)).mean()

        # eq. 7: column n = pixel n against all prototypes of its sample
        pixel_logits = torch.einsum("bic,bcn->bin", prototypes, flat) / tau
        pixel_logits = pixel_logits.masked_fill(absent_column.transpose(1, 2), float("-inf"))
        own_pixel = pixel_logits.gather(1, flat_labels.unsqueeze(1)).squeeze(1)  # (B, N)
        clustering = (torch.logsumexp(pixel_logits, dim=1) - own_pixel).mean()

        if config.scale_by_num_classes:
            separation = separation / num_classes
            clustering = clustering / num_classes
        loss = config.separation_weight * separation + config.clustering_weight * clustering
    return PDLOutput(loss, separation, clustering)


class PDLLoss(torch.nn.Module):
    """Module wrapper of :func:`pdl_loss` with a fixed number of classes and configuration."""

    def __init__(self, num_classes: int, config: PDLConfig = PDLConfig()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> PDLOutput:
        return pdl_loss(features, labels, self.num_classes, self.config)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self.config}"


@torch.no_grad()
def prototype_assignments(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, normalize: bool = False
) -> torch.Tensor:
    """For each pixel, the class whose prototype is most similar (argmax of ``P_i . f``), among the
    classes present in its sample: ``(B, *spatial)`` int64. Shows what the network has learned to
    separate; it equals ``labels`` where the clustering term is satisfied."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat, flat_labels = _flatten(features, labels)
        flat = flat.float()
        if normalize:
            flat = F.normalize(flat, dim=1)
        prototypes, present = _prototypes(flat, flat_labels, num_classes, normalize)
        similarity = torch.einsum("bic,bcn->bin", prototypes, flat)
        similarity = similarity.masked_fill(~present.unsqueeze(2), float("-inf"))
        return similarity.argmax(dim=1).reshape(labels.shape)
