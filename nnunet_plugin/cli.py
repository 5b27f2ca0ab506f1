"""``rasd nnunet plan``: write RaSD plans for an nnU-Net dataset (registered in pyproject.toml).

Heavy modules (torch, nnunetv2) are imported inside the run functions so ``rasd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["configure_plan"]


def configure_plan(parser: argparse.ArgumentParser) -> None:
    """Write RaSD plans for an nnU-Net dataset: its own plans with the pre-trained network in them.

    Starts from the dataset's nnU-Net plans (run nnUNetv2_plan_and_preprocess first) and writes
    PLANS_NAME.json beside them (default RaSDPlans; nnUNetPlans.json is never touched): the
    weights' network and identity (source, sha256), the patch rounded to the network's divisor, a
    batch size re-estimated for its memory, the intensity mapping, and the preprocessed data of
    the source plans (reused, not written again).

    Examples:
      rasd nnunet plan -d 501 --weights rasd2d_small
      rasd nnunet plan -d 502 --weights weights/rasd3d -c 3d_fullres --plans-name RaSDPlans_mine
      nnUNetv2_train 501 2d 0 -p RaSDPlans -tr RaSDTrainer
    """
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (Dataset501_X)")
    parser.add_argument("--weights", default=os.environ.get("RASD_WEIGHTS") or None,
                        help="registry name or ARCH.TAG (`rasd hub list --pretrained`), "
                             "hf-hub:ORG/REPO[@REV] or a weights folder (default: $RASD_WEIGHTS)")
    parser.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CFG",
                        help="configurations to plan (default: every one that fits the weights' "
                             "dimensionality)")
    parser.add_argument("--plans-name", default="RaSDPlans", help="plans identifier to write "
                        "(train with -p NAME; default RaSDPlans)")
    parser.add_argument("--source-plans", default="nnUNetPlans",
                        help="plans identifier to start from (default nnUNetPlans)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from nnunet_plugin.planning import plan_dataset
    from rasd_hub.errors import RasdValueError

    if not args.weights:
        raise RasdValueError("--weights is required (or set RASD_WEIGHTS): a registry name such as "
                             "rasd2d_small, hf-hub:ORG/REPO@REV or a weights folder")
    result = plan_dataset(args.dataset, args.weights, args.configurations, args.plans_name,
                          args.source_plans)
    if args.json:
        print(json.dumps({"plans_file": str(result.plans_file), "plans_name": result.plans_name,
                          "weights": result.weights, "configurations": result.configurations,
                          "skipped": result.skipped,
                          "needs_preprocessing": result.needs_preprocessing}, indent=2))
        return 0
    print(result.summary())
    for name in result.needs_preprocessing:
        print(f"  {name}: preprocess first: nnUNetv2_preprocess -d {args.dataset} -plans_name "
              f"{result.plans_name} -c {name}")
    first = next(iter(result.configurations))
    print(f"train: nnUNetv2_train {args.dataset} {first} FOLD -p {result.plans_name} -tr RaSDTrainer")
    return 0
