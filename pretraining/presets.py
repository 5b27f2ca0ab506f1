"""Named pre-training recipes: model, synthetic data size, batch, optimiser and run length.

``rasd3d_swinb`` and ``rasd2d`` are the paper's recipes (section 4.3, with the released code's
model and synthesis settings); the ``_small`` presets shrink model, image and class count so that a
run on a 2-core CPU learns something visible (falling loss, prototype maps that follow the label
regions) in a few minutes. Every field can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pretraining.errors import UnknownPresetError

__all__ = ["Preset", "PRESETS", "get_preset", "format_presets"]


@dataclass(frozen=True)
class Preset:
    """One pre-training recipe.

    ``batch_size`` is per rank (the paper's "batch 2 per GPU"); the runner multiplies it by the
    number of ranks unless ``--batch-size`` gives the global batch explicitly.
    """

    name: str
    description: str
    architecture: str
    """a ``rasd_hub`` architecture, built with ``rasd_hub.create_model``."""
    model_kwargs: dict[str, Any]
    """extra keyword arguments of ``create_model`` (e.g. a smaller width)."""
    spatial_dims: int
    size: int
    """edge length of the synthetic images (cubes in 3D, squares in 2D)."""
    num_classes: int
    """classes per synthetic label map (I in the paper)."""
    batch_size: int
    lr: float
    steps: int
    synthesis: str = "official"
    """``SynthesisConfig.from_preset`` name: the released code's ranges or the paper's text."""
    synthesis_kwargs: dict[str, Any] = field(default_factory=dict)
    """fields of that synthesis preset replaced (``SynthesisConfig.with_overrides``)."""
    weight_decay: float = 0.01
    """AdamW's default; the released code does not set it."""
    warmup_steps: int = 0
    schedule: str = "constant"
    """``constant`` (paper and released code) or ``cosine`` decay after the warm-up."""
    grad_clip: float | None = None
    """max global gradient norm; None: no clipping (released code)."""
    pdl_normalize: bool = False
    """L2-normalise embeddings and prototypes in the PDL loss (the released code does not)."""
    checkpoint_every: int = 1000
    log_every: int = 10
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PAPER_STEPS = 600_000

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="rasd3d_swinb",
            description="paper RaSD-3D: Swin UNETR v2 (Swin-B, 72.8M params), 128^3, 8 classes",
            architecture="rasd3d_swinb",
            model_kwargs={},
            spatial_dims=3, size=128, num_classes=8, batch_size=2, lr=1e-5, steps=_PAPER_STEPS,
            checkpoint_every=5000, log_every=50,
            notes="paper 4.3 / released train_RaSD.py: AdamW lr 1e-5, no schedule, no clipping",
        ),
        Preset(
            name="rasd2d",
            description="paper RaSD-2D: 2D UNet with a CNN encoder, 512^2, 16 classes",
            architecture="rasd2d",
            model_kwargs={},
            spatial_dims=2, size=512, num_classes=16, batch_size=16, lr=1e-5, steps=_PAPER_STEPS,
            checkpoint_every=5000, log_every=50,
            notes="I = 512/32 = 16 classes as in the released 2D generator",
        ),
        Preset(
            name="rasd2d_small",
            description="small 2D UNet (1.6M params), 64^2, 6 classes: a useful CPU run in minutes",
            architecture="rasd2d_small",
            model_kwargs={},
            spatial_dims=2, size=64, num_classes=6, batch_size=8, lr=1e-3, steps=300,
            warmup_steps=20, schedule="cosine", grad_clip=1.0, checkpoint_every=100, log_every=10,
            notes="64^2 with 6 classes keeps class regions tens of pixels wide (the synthesis "
            "scales its noise grids with the size) at ~0.1-0.3 s per step on 2 cores; lr 1e-3 "
            "with warm-up and cosine because 300 steps at the paper's 1e-5 barely move the loss",
        ),
        Preset(
            name="rasd2d_small_v2",
            description="rasd2d_small's v2 weights: 10k steps, paper synthesis, normalised PDL",
            architecture="rasd2d_small",
            model_kwargs={},
            spatial_dims=2, size=64, num_classes=6, batch_size=8, lr=1e-3, steps=10_000,
            synthesis="paper", pdl_normalize=True,
            warmup_steps=20, schedule="cosine", grad_clip=1.0, checkpoint_every=1000, log_every=10,
            notes="the recipe of rasd2d_small.v2_synth10k_cpu, chosen on validation cases "
            "(docs/results.md, issue 12): rasd2d_small with the paper's synthesis ranges and "
            "L2-normalised PDL embeddings, for v1's 10k steps",
        ),
        Preset(
            name="rasd3d_small",
            description="small 3D UNet (1.2M params), 32^3, 4 classes: a CPU run in minutes",
            architecture="rasd3d_small",
            model_kwargs={},
            spatial_dims=3, size=32, num_classes=4, batch_size=2, lr=1e-3, steps=200,
            warmup_steps=20, schedule="cosine", grad_clip=1.0, checkpoint_every=50, log_every=5,
            notes="32^3 with 4 classes keeps regions several voxels wide at 1/8 of a 64^3 "
            "volume's cost; lr 1e-3 with warm-up for a short run",
        ),
        Preset(
            name="rasd3d_resencl",
            description="nnU-Net's ResEnc-L 3D (102M params, nnssl's layout), 128^3, 8 classes",
            architecture="rasd3d_resencl",
            model_kwargs={},
            spatial_dims=3, size=128, num_classes=8, batch_size=2, lr=1e-5, steps=_PAPER_STEPS,
            checkpoint_every=5000, log_every=50,
            notes="the paper's 3D recipe (128^3, batch 2 per GPU, AdamW 1e-5, constant) on "
            "nnU-Net's network; 128 is a multiple of its divisor 32",
        ),
        Preset(
            name="rasd2d_resencl",
            description="nnU-Net's 2D ResEnc-L layout (140M params), 512^2, 16 classes",
            architecture="rasd2d_resencl",
            model_kwargs={},
            spatial_dims=2, size=512, num_classes=16, batch_size=16, lr=1e-5, steps=_PAPER_STEPS,
            checkpoint_every=5000, log_every=50,
            notes="the paper's 2D recipe on nnU-Net's network (divisor 128)",
        ),
        Preset(
            name="rasd2d_resenc_small",
            description="small 2D ResEnc U-Net (1.8M params), 64^2, 6 classes: a CPU run in minutes",
            architecture="rasd2d_resenc_small",
            model_kwargs={},
            spatial_dims=2, size=64, num_classes=6, batch_size=8, lr=1e-3, steps=300,
            warmup_steps=20, schedule="cosine", grad_clip=1.0, checkpoint_every=100, log_every=10,
            notes="rasd2d_small's recipe on nnU-Net's network",
        ),
        Preset(
            name="rasd3d_resenc_small",
            description="small 3D ResEnc U-Net (1.3M params), 32^3, 4 classes: a CPU run in minutes",
            architecture="rasd3d_resenc_small",
            model_kwargs={},
            spatial_dims=3, size=32, num_classes=4, batch_size=2, lr=1e-3, steps=200,
            warmup_steps=20, schedule="cosine", grad_clip=1.0, checkpoint_every=50, log_every=5,
            notes="rasd3d_small's recipe on nnU-Net's network",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or an :class:`UnknownPresetError` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
            "(see `rasd pretrain --list-presets`)"
        ) from None


def format_presets() -> str:
    """A table of the presets and their main settings, for ``--list-presets``."""
    rows = [("preset", "model", "size", "classes", "batch/rank", "lr", "steps", "schedule")]
    for p in PRESETS.values():
        size = "x".join([str(p.size)] * p.spatial_dims)
        rows.append((p.name, p.architecture, size, str(p.num_classes), str(p.batch_size),
                     f"{p.lr:g}", str(p.steps), p.schedule))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    lines += [f"{p.name}: {p.description}" + (f" ({p.notes})" if p.notes else "")
              for p in PRESETS.values()]
    return "\n".join(lines)
