"""``python -m pretraining ...`` is ``rasd pretrain ...``; it is the form ``torchrun`` launches:

    torchrun --nproc_per_node 4 -m pretraining --preset rasd3d_swinb --out runs/swinb --resume
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from pretraining.cli_train import configure_pretrain
    from rasd_hub.errors import RasdError

    parser = argparse.ArgumentParser(
        prog="python -m pretraining",
        description="Pre-train with PDL on synthetic data (same options as `rasd pretrain`).",
    )
    configure_pretrain(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RasdError as err:
        print(f"python -m pretraining: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
