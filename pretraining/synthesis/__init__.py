"""RaSD's randomized synthesis engine: random label maps and images, batched, on any device.

>>> import torch
>>> from pretraining.synthesis import SynthesisConfig, synthesize
>>> config = SynthesisConfig.from_preset("official", dim=3, size=64)
>>> image, label = synthesize(config, batch_size=2, generator=torch.Generator().manual_seed(0))

See ``config.py`` for every knob and the two presets, ``labels.py`` and ``images.py`` for the
two engines, ``stream.py`` for training streams and ``stats.py`` for checkable statistics.
"""

from .config import PRESETS, SynthesisConfig
from .engine import resolve_device, synthesize
from .stream import SyntheticStream

__all__ = ["PRESETS", "SynthesisConfig", "SyntheticStream", "resolve_device", "synthesize"]
