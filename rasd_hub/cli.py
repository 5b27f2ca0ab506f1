"""The ``rasd`` command line.

Subcommands are contributed by each package through the ``rasd.commands`` entry-point group (see
``pyproject.toml``), so this dispatcher knows nothing of ``pretraining`` or ``nnunet_plugin`` and the
layering stays one-way. An entry point named ``bench.synth`` becomes ``rasd bench synth``; its value
is a function ``configure(parser)`` that adds the arguments and calls
``parser.set_defaults(func=run)`` where ``run(args) -> int | None``. The first line of its docstring
is the one-line help shown by ``rasd --help``.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from rasd_hub.errors import RasdError

__all__ = ["main", "build_parser"]

# One-line help for command groups, whose members come from several packages.
GROUP_HELP = {
    "bench": "benchmarks: speed and memory, printed as a table or JSON",
    "hub": "model hub: list, inspect, download, push, export and convert weights",
    "eval": "fine-tuning benchmarks on real data",
    "nnunet": "nnU-Net: write RaSD plans for a dataset",
}


def _summary(func) -> str:
    doc = (func.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rasd",
        description="RaSD: synthetic pre-training, a model hub and nnU-Net fine-tuning for "
        "medical images. Run `rasd COMMAND --help` for each command.",
    )
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {}

    def subparsers_of(path: tuple[str, ...], owner: argparse.ArgumentParser):
        if path not in groups:
            groups[path] = owner.add_subparsers(
                title="commands", metavar="COMMAND", dest="_cmd_" + "_".join(path or ("root",))
            )
        return groups[path]

    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    for ep in sorted(entry_points(group="rasd.commands"), key=lambda e: e.name):
        path = tuple(ep.name.split("."))
        # create intermediate group parsers ("bench" for "bench.synth")
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in parsers:
                parent = parsers[prefix[:-1]]
                sub = subparsers_of(prefix[:-1], parent).add_parser(
                    prefix[-1], help=GROUP_HELP.get(prefix[-1], f"{prefix[-1]} commands"),
                    description=GROUP_HELP.get(prefix[-1]),
                )
                sub.set_defaults(func=_print_help(sub))
                parsers[prefix] = sub
        configure = ep.load()
        parent = parsers[path[:-1]]
        summary = _summary(configure)
        sub = subparsers_of(path[:-1], parent).add_parser(
            path[-1], help=summary, description=(configure.__doc__ or "").strip() or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        configure(sub)
        parsers[path] = sub
    parser.set_defaults(func=_print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser):
    def run(args) -> int:
        parser.print_help()
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except RasdError as err:
        print(f"rasd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
