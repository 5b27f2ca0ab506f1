"""`rasd pretrain`, `rasd demo` and `rasd bench train` (placeholder, being written)."""

from __future__ import annotations

from rasd_hub.errors import RasdError


def _todo(args):
    raise RasdError("this command is not implemented yet")


def configure_demo(parser):
    """Run the main job end to end on CPU."""
    parser.set_defaults(func=_todo)


def configure_pretrain(parser):
    """Pre-train a model with PDL on synthetic data."""
    parser.set_defaults(func=_todo)


def configure_bench_train(parser):
    """Measure pre-training throughput."""
    parser.set_defaults(func=_todo)

