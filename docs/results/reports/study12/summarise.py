"""The validation study's tables from its reports: one row per candidate, paired with scratch
under the same recipe. Usage: python summarise.py REPORT_DIR [SCRATCH_DIR [BASELINE_DIR]]: reports
without a scratch init take scratch's per-seed values from SCRATCH_DIR's report of the same dataset;
with BASELINE_DIR (a candidate folder of an earlier round) two more columns compare each candidate's
RaSD Dice with that baseline's, paired over the same (dataset, seed) pairs."""

import json
import sys
from pathlib import Path

from nnunet_plugin.evaluation.stats import paired_test

root = Path(sys.argv[1])
baseline = Path(sys.argv[3]) if len(sys.argv) > 3 else None


def rasd_values(report: dict) -> list[float]:
    return report["inits"][next(k for k in report["inits"] if k != "scratch")]["per_seed_mean_dice"]


DATASETS = {"Dataset501_LiverCT2D": "CT liver", "Dataset503_MNIBrain2D": "MR brain",
            "Dataset504_Nuclei2D": "nuclei"}
print("| candidate | " + " | ".join(f"{n}: scratch → RaSD" for n in DATASETS.values())
      + " | mean RaSD | mean Δ | Δ > 0 | paired p (9 pairs) |"
      + (f" RaSD - {baseline.name} | p vs {baseline.name} |" if baseline else ""))
print("| --- |" + " --- |" * (len(DATASETS) + 4 + 2 * bool(baseline)))
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    cells, rasd_means, deltas, a_all, b_all, base_all = [], [], [], [], [], []
    for ds in DATASETS:
        path = folder / f"{ds}.json"
        if not path.is_file():
            cells.append("—")
            continue
        report = json.loads(path.read_text())
        inits = report["inits"]
        other = next(k for k in inits if k != "scratch")
        if "scratch" not in inits:
            reference = json.loads((Path(sys.argv[2]) / f"{ds}.json").read_text())
            assert reference["seeds"] == report["seeds"] and reference["split"] == report["split"]
            recipe = {**report["config"]}
            if recipe.get("precision") == "fp32":  # the default; reports before it existed omit it
                del recipe["precision"]
            assert reference["config"] == recipe
            inits = {**inits, "scratch": reference["inits"]["scratch"]}
        a, b = inits["scratch"]["per_seed_mean_dice"], inits[other]["per_seed_mean_dice"]
        a_all += a
        b_all += b
        if baseline:
            base_report = json.loads((baseline / f"{ds}.json").read_text())
            assert base_report["seeds"] == report["seeds"] and base_report["split"] == report["split"]
            base_all += rasd_values(base_report)
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        rasd_means.append(mb)
        deltas.append(mb - ma)
        cells.append(f"{ma:.3f} → {mb:.3f} ({mb - ma:+.3f})")
    if not deltas:
        continue
    test = paired_test(a_all, b_all) if len(a_all) > 1 else None
    p = "" if test is None or test.p_value is None else f"{test.p_value:.2g}"
    versus = ""
    if baseline and len(base_all) == len(b_all):
        vs = paired_test(base_all, b_all)
        versus = (f" {(sum(b_all) - sum(base_all)) / len(b_all):+.3f} | "
                  f"{'' if vs.p_value is None else f'{vs.p_value:.2g}'} |")
    print(f"| {folder.name} | " + " | ".join(cells) + f" | {sum(rasd_means) / len(rasd_means):.3f} | "
          f"{sum(deltas) / len(deltas):+.3f} | {sum(d > 0 for d in deltas)}/{len(deltas)} | {p} |" + versus)
