"""Issue 12's final table (test cases) from the `rasd eval compare --out` reports in a folder, and
the issue's target checked per path (in-process loop, nnU-Net backend). Usage: python summarise.py REPORT_DIR

A seed "loses a class" when that class scores below 0.1 Dice in the seed while scratch finds it
(scratch's mean Dice for the class over the seeds is 0.3 or more)."""

import json
import sys
from pathlib import Path

NAMES = {"Dataset501_LiverCT2D": "CT liver + tumour 2D", "Dataset503_MNIBrain2D": "MR brain GM/WM 2D",
         "Dataset504_Nuclei2D": "nuclei 2D", "Dataset505_Nuclei3D": "nuclei 3D",
         "Dataset502_LiverCT3D": "CT liver + tumour 3D"}
ORDER = {"all": 0, "3": 1, "1": 2}
SHORT = {"rasd2d_small.synth10k_cpu": "v1", "rasd2d_small.v2_synth10k_cpu": "v2",
         "rasd3d_small.synth2300_h200": "3D weights"}


def lost_classes(report: dict, init: str) -> list[str]:
    runs = {r["seed"]: r for r in report["inits"]["scratch"]["runs"]}
    found = [c for c in report["classes"]
             if sum(r["per_class"][c] for r in runs.values()) / len(runs) >= 0.3]
    return [f"{c} (seed {r['seed']})" for r in report["inits"][init]["runs"] for c in found
            if r["per_class"][c] < 0.1]


def cell(summary: dict) -> str:
    """An init's mean Dice and t 95 % CI over seeds, as the report stores them."""
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} [{low:.3f}, {high:.3f}]"


reports = []
for path in Path(sys.argv[1]).glob("*.json"):
    report = json.loads(path.read_text())
    regime = path.stem.rsplit("_", 1)[1]
    nnunet = report["config"].get("backend") == "nnunet"
    path_name = ("nnU-Net " + report["config"]["trainer"] if nnunet else
                 "in-process" + (" bf16" if report["config"].get("precision") == "bf16" else ""))
    reports.append((list(NAMES).index(Path(report["dataset"]).name), ORDER[regime], nnunet, path_name,
                    report))
reports.sort(key=lambda r: r[:3])

print("| dataset | path | train / test | scratch | init | RaSD | Δ | Δ > 0 (seeds) | p | per class: scratch → RaSD | seeds losing a class |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
verdicts = []
for *_, path, report in reports:
    inits, split = report["inits"], report["split"]
    a = inits["scratch"]["per_seed_mean_dice"]
    for pair in report["pairs"]:  # each init paired with scratch over seeds by `rasd eval compare`
        assert pair["reference"] == "scratch"
        init, delta, p_value = pair["init"], pair["mean_difference"], pair["p_value"]
        b = inits[init]["per_seed_mean_dice"]
        lost = lost_classes(report, init)
        per_class = " / ".join(f"{inits['scratch']['per_class'][c]['mean']:.2f}→"
                               f"{inits[init]['per_class'][c]['mean']:.2f}" for c in report["classes"])
        name = NAMES[Path(report["dataset"]).name]
        print(f"| {name} | {path} | {len(split['train'])} / {len(split['test'])} | {cell(inits['scratch'])} | {SHORT.get(init, init)} | "
              f"{cell(inits[init])} | {delta:+.3f} | {sum(y > x for x, y in zip(a, b))}/{len(a)} | "
              f"{p_value:.2g} | {per_class} | {', '.join(lost) or 'none'} |")
        verdicts.append((name, len(split["train"]), init, delta, p_value, lost, path))

print()
# the target is v2's; v1's line is printed alongside for comparison
checked = [("2D", "rasd2d_small.v2_synth10k_cpu"), ("2D", "rasd2d_small.synth10k_cpu"),
           ("3D", "rasd3d_small.synth2300_h200")]
for dim, init in checked:
    for backend in ("in-process", "nnU-Net"):  # the target checked per path, never mixing them
        rows = [v for v in verdicts if v[0].endswith(dim) and v[2] == init and v[6].startswith(backend)]
        if not rows:
            continue
        few = [v for v in rows if v[1] <= 3]
        significant = [v for v in rows if v[4] is not None and v[4] < 0.05]
        print(f"{dim} ({init}, {backend}): few-shot regimes with Δ >= +0.02: "
              f"{sum(v[3] >= 0.02 for v in few)}/{len(few)}; regimes below -0.01: "
              f"{sum(v[3] < -0.01 for v in rows)}/{len(rows)}; ahead at p < 0.05: "
              f"{sum(v[3] > 0 for v in significant)}/{len(rows)}; "
              f"behind at p < 0.05: {sum(v[3] < 0 for v in significant)}/{len(rows)}; "
              f"regimes with a seed losing a class: {sum(bool(v[5]) for v in rows)}/{len(rows)}")
