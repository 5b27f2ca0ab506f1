"""`rasd hub ...` and `rasd bench hub` (placeholder, being written)."""

from __future__ import annotations

from rasd_hub.errors import RasdError


def _todo(args):
    raise RasdError("this command is not implemented yet")


def configure_bench(parser):
    """Measure model build and weight-loading time and memory."""
    parser.set_defaults(func=_todo)


def configure_list(parser):
    """List registered models."""
    parser.set_defaults(func=_todo)


def configure_info(parser):
    """Show a model's metadata."""
    parser.set_defaults(func=_todo)


def configure_download(parser):
    """Prefetch weights into the Hub cache."""
    parser.set_defaults(func=_todo)


def configure_push(parser):
    """Upload weights to the Hub."""
    parser.set_defaults(func=_todo)


def configure_export(parser):
    """Turn a training checkpoint into rasd_hub format."""
    parser.set_defaults(func=_todo)


def configure_convert(parser):
    """Convert a released RaSD checkpoint."""
    parser.set_defaults(func=_todo)

