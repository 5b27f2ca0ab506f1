"""`rasd synth` and `rasd bench synth` (placeholder, being written)."""

from __future__ import annotations

from rasd_hub.errors import RasdError


def _todo(args):
    raise RasdError("this command is not implemented yet")


def configure_synth(parser):
    """Generate synthetic image/label pairs and a preview."""
    parser.set_defaults(func=_todo)


def configure_bench_synth(parser):
    """Measure synthesis throughput."""
    parser.set_defaults(func=_todo)

