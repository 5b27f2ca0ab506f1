"""`rasd bench nnunet`: the batch rule of `rasd nnunet plan` for every registered architecture.

nnU-Net plans two reference datasets shaped like common ones (synthetic images, planning only, no
preprocessing): 2D slices of 512 x 512 and 3D volumes of 160^3 at 1 mm. For each configuration and
each registered rasd_hub architecture of its dimensionality, the plugin's planning computes the
rounded patch, the activation memory per sample (meta device) and the batch.

``--measure`` checks the memory model the rule rests on: for nnU-Net's network at its plan and
for each RaSD network at the batch that fits nnU-Net's memory, one real training step (forward,
loss, backward, optimiser step) runs on the CPU in a fresh process, and the peak memory it adds
(VmHWM above the resident memory before the step) is set beside the model's prediction,
``batch * activation bytes + bytes per parameter * parameters``. A step predicted above 4 GiB is
measured at batch 1 and half the patch per axis instead.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["REFERENCES", "run_benchmark", "format_table", "step_memory"]

#: (dataset id, name, image shape, cases, nnU-Net configurations)
REFERENCES = ((980, "Ref2D512", (512, 512), 12, ("2d",)),
              (981, "Ref3D160", (160, 160, 160), 4, ("2d", "3d_fullres")))
#: a step predicted to need more than this is measured smaller (the CPU machine has 24 GiB)
MEASURE_LIMIT_BYTES = 4 << 30

_STEP = r"""
import json, sys, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
a = spec["architecture"]
net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                             spec["in_channels"], spec["num_classes"], allow_init=True,
                             deep_supervision=spec["deep_supervision"])
if spec["optimizer"] == "sgd":
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
else:
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
x = torch.randn(spec["batch"], spec["in_channels"], *spec["patch"])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident memory
before = status("VmRSS:")
out = net(x)
loss = sum(o.float().square().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
loss.backward()
opt.step()
print(json.dumps({"peak_added_bytes": status("VmHWM:") - before}))
"""


def step_memory(architecture: dict, in_channels: int, num_classes: int, batch: int, patch,
                optimizer: str, deep_supervision: bool) -> int:
    """Peak memory (bytes) one CPU training step adds, measured in a fresh process (Linux)."""
    spec = json.dumps({"architecture": architecture, "in_channels": in_channels,
                       "num_classes": num_classes, "batch": int(batch), "patch": list(patch),
                       "optimizer": optimizer, "deep_supervision": deep_supervision})
    proc = subprocess.run([sys.executable, "-c", _STEP, spec], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring a training step failed (exit status {proc.returncode}; -9 is "
                           f"usually the kernel's out-of-memory killer):\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_added_bytes"])


def _predicted(architecture: dict, in_channels: int, num_classes: int, batch: int, patch,
               bytes_per_param: int, deep_supervision: bool) -> int:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_plugin.planning import activation_bytes

    net = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                 architecture["_kw_requires_import"], in_channels, num_classes,
                                 allow_init=False, deep_supervision=deep_supervision)
    params = sum(p.numel() for p in net.parameters())
    return batch * activation_bytes(net, (1, in_channels, *patch)) + bytes_per_param * params


def _check(architecture, channels, classes, batch, patch, optimizer, deep_supervision, divisor):
    """(batch, patch, predicted, measured) of one step, made smaller when it would not fit."""
    from nnunet_plugin.planning import ADAMW_BYTES_PER_PARAM, SGD_MOMENTUM_BYTES_PER_PARAM

    per_param = SGD_MOMENTUM_BYTES_PER_PARAM if optimizer == "sgd" else ADAMW_BYTES_PER_PARAM
    predicted = _predicted(architecture, channels, classes, batch, patch, per_param, deep_supervision)
    if predicted > MEASURE_LIMIT_BYTES:
        batch, patch = 1, [max(divisor, p // 2 // divisor * divisor) for p in patch]
        predicted = _predicted(architecture, channels, classes, batch, patch, per_param, deep_supervision)
    measured = step_memory(architecture, channels, classes, batch, patch, optimizer, deep_supervision)
    return batch, list(patch), predicted, measured


def _reference_plans(root: Path, reference) -> tuple[Any, dict]:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_plugin.commands import nnunet_environment, plan_and_preprocess
    from nnunet_plugin.datasets import build_synthetic_dataset

    dataset_id, name, shape, cases, configurations = reference
    env = nnunet_environment(root)
    build_synthetic_dataset(env["nnUNet_raw"], dataset_id, num_cases=cases, shape=shape, num_test=0,
                            name=name)
    plan_and_preprocess(dataset_id, env, configurations=configurations, preprocess=False, verify=False)
    folder = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_{name}"
    return PlansManager(load_json(str(folder / "nnUNetPlans.json"))), load_json(str(folder / "dataset.json"))


def run_benchmark(architectures: list[str] | None = None, measure: bool = False,
                  work_dir: str | None = None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rasd-bench-nnunet-", dir=work_dir) as tmp:
        for reference in REFERENCES:
            manager, dataset_json = _reference_plans(Path(tmp), reference)
            for configuration in reference[4]:
                rows += _rows(manager, dataset_json, f"{reference[1]} {configuration}", configuration,
                              architectures, measure)
    return rows


def _rows(manager, dataset_json, label, configuration, architectures, measure) -> list[dict]:
    import rasd_hub
    import torch

    from nnunet_plugin.planning import plan_configuration

    source = manager.get_configuration(configuration).configuration
    channels = len(dataset_json["channel_names"])
    classes = manager.get_label_manager(dataset_json).num_segmentation_heads
    nnunet_check = None
    if measure:
        divisor = math.prod(int(k[0]) for k in source["architecture"]["arch_kwargs"]["strides"])
        nnunet_check = _check(source["architecture"], channels, classes, source["batch_size"],
                              source["patch_size"], "sgd", True, divisor)
    rows = []
    for arch in architectures or rasd_hub.list_models():
        if rasd_hub.model_info(arch)["spatial_dims"] != len(source["patch_size"]):
            continue
        try:
            with torch.device("meta"):
                config = rasd_hub.create_model(arch).rasd_config
        except (RuntimeError, NotImplementedError):  # MONAI's Swin calls .item() when built
            config = rasd_hub.create_model(arch).rasd_config
        cfg, summary = plan_configuration(manager, dataset_json, configuration, config, arch)
        rule = summary["batch_size_rule"]
        row = {"dataset": label, "architecture": arch,
               "nnunet_patch": summary["nnunet_patch_size"], "nnunet_batch": rule["nnunet_batch"],
               "nnunet_mib_per_sample": rule["nnunet_activation_bytes_per_sample"] / 2**20,
               "patch": summary["patch_size"], "batch": summary["batch_size"],
               "mib_per_sample": rule["activation_bytes_per_sample"] / 2**20,
               "parameters": rule["parameters"], "fits_memory": rule["fits_memory"],
               "warning": rule.get("warning", "")}
        if measure:
            row["nnunet_check"] = nnunet_check
            row["check"] = _check(cfg["architecture"], channels, classes, max(1, rule["fits_memory"]),
                                  summary["patch_size"], "adamw", False, int(config["input_divisor"]))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["configuration", "architecture", "nnU-Net patch x batch", "nnU-Net MiB/sample",
            "RaSD patch x batch", "MiB/sample", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["dataset"], r["architecture"],
            f"{'x'.join(map(str, r['nnunet_patch']))} x {r['nnunet_batch']}", f"{r['nnunet_mib_per_sample']:.0f}",
            f"{'x'.join(map(str, r['patch']))} x {r['batch']}" + (" (!)" if r["warning"] else ""),
            f"{r['mib_per_sample']:.0f}", f"{r['parameters'] / 1e6:.1f}M"]) + " |")
    if any(r["warning"] for r in rows):
        lines.append("\n(!) even batch 2 needs more memory than nnU-Net's plan: the plans warn")
    checks = [r for r in rows if "check" in r]
    if checks:
        lines += ["", "Memory of one CPU training step, predicted by the rule's model vs measured:", "",
                  "| configuration | network | batch x patch | predicted MiB | measured MiB | measured / predicted |",
                  "| --- | --- | --- | --- | --- | --- |"]
        seen = set()
        for r in checks:
            for name, key in (("nnU-Net's", "nnunet_check"), (r["architecture"], "check")):
                batch, patch, predicted, measured = r[key]
                if (r["dataset"], name) in seen:
                    continue
                seen.add((r["dataset"], name))
                lines.append(f"| {r['dataset']} | {name} | {batch} x {'x'.join(map(str, patch))} | "
                             f"{predicted / 2**20:.0f} | {measured / 2**20:.0f} | {measured / predicted:.2f} |")
    return "\n".join(lines)


def configure_bench(parser) -> None:
    """The batch rule of `rasd nnunet plan` for the registered networks (and measured memory).

    Plans two reference datasets with nnU-Net (2D 512^2 slices, 3D 160^3 volumes; synthetic,
    planning only) and prints, per configuration and architecture, nnU-Net's patch and batch, the
    RaSD patch and batch, and the activation memory per sample. --measure runs one CPU training
    step of each network at its batch in a fresh process and prints the peak memory it added.

    Example:
      rasd bench nnunet --architectures rasd2d_small rasd2d rasd3d_small rasd3d_swinb --measure
    """
    parser.add_argument("--architectures", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--measure", action="store_true", help="also measure one training step's memory")
    parser.add_argument("--work-dir", default=None, help="where the reference datasets go (temporary)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_bench)


def run_bench(args) -> int:
    rows = run_benchmark(args.architectures, measure=args.measure, work_dir=args.work_dir)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
