"""The validation study's tables from its reports: one row per candidate, paired with scratch
under the same recipe.

Usage: python summarise.py REPORT_DIR [SCRATCH_DIR [BASELINE]]

REPORT_DIR holds one folder per candidate, with one report per dataset. Reports without a scratch
init take scratch's per-seed values from SCRATCH_DIR's report of the same dataset (pass "-" when
every report has its own). A report with several pre-trained inits gives one row per init. With
BASELINE two more columns compare each row's RaSD Dice with the baseline's, paired over the same
(dataset, seed) pairs: BASELINE is a candidate folder of an earlier round, or the name of an init
in the same reports (a tag, or the run folder of a RUN/export init)."""

import json
import sys
from functools import cache
from pathlib import Path

from nnunet_plugin.evaluation.stats import paired_test

root = Path(sys.argv[1])
scratch_dir = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
baseline = sys.argv[3] if len(sys.argv) > 3 else None
baseline_dir = Path(baseline) if baseline and Path(baseline).is_dir() else None

NAMES = {"Dataset501_LiverCT2D": "CT liver", "Dataset503_MNIBrain2D": "MR brain",
         "Dataset504_Nuclei2D": "nuclei", "Dataset502_LiverCT3D": "CT liver 3D",
         "Dataset505_Nuclei3D": "nuclei 3D"}
folders = sorted(p for p in root.iterdir() if p.is_dir())
DATASETS = [ds for ds in NAMES if any((f / f"{ds}.json").is_file() for f in folders)]


@cache
def read(path: Path) -> dict:
    """Each report is read once, however many rows and baselines use it."""
    return json.loads(path.read_text())


def label(init: str) -> str:
    """A tag as it is; a weights folder RUN/export by its run folder's name."""
    path = Path(init)
    return path.parent.name if path.name == "export" else init


def rasd_inits(report: dict) -> list[str]:
    return [k for k in report["inits"] if k != "scratch"]


def with_scratch(report: dict, ds: str) -> dict:
    inits = report["inits"]
    if "scratch" in inits:
        return inits
    reference = read(scratch_dir / f"{ds}.json")
    assert reference["seeds"] == report["seeds"] and reference["split"] == report["split"]
    recipe = {**report["config"]}
    if recipe.get("precision") == "fp32":  # the default; reports before it existed omit it
        del recipe["precision"]
    assert reference["config"] == recipe
    return {**inits, "scratch": reference["inits"]["scratch"]}


def baseline_values(report: dict, ds: str) -> list[float] | None:
    if baseline_dir is not None:
        base_report = read(baseline_dir / f"{ds}.json")
        assert base_report["seeds"] == report["seeds"] and base_report["split"] == report["split"]
        return base_report["inits"][rasd_inits(base_report)[0]]["per_seed_mean_dice"]
    if baseline is not None:
        return next((v["per_seed_mean_dice"] for k, v in report["inits"].items()
                     if label(k) == baseline), None)
    return None


rows = []  # (row name, folder, init index within the folder's reports)
for folder in folders:
    reports = [read(p) for p in sorted(folder.glob("*.json"))]
    count = len(rasd_inits(reports[0])) if reports else 0
    for index in range(count):
        names = {label(rasd_inits(r)[index]) for r in reports}
        rows.append((folder.name if count == 1 else names.pop(), folder, index))

lines, pair_counts = [], set()
for name, folder, index in rows:
    cells, rasd_means, deltas, a_all, b_all, base_all = [], [], [], [], [], []
    for ds in DATASETS:
        path = folder / f"{ds}.json"
        if not path.is_file():
            cells.append("—")
            continue
        report = read(path)
        inits = with_scratch(report, ds)
        a = inits["scratch"]["per_seed_mean_dice"]
        b = inits[rasd_inits(report)[index]]["per_seed_mean_dice"]
        a_all += a
        b_all += b
        base = baseline_values(report, ds)
        if base is not None:
            base_all += base
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        rasd_means.append(mb)
        deltas.append(mb - ma)
        cells.append(f"{ma:.3f} → {mb:.3f} ({mb - ma:+.3f})")
    if not deltas:
        continue
    pair_counts.add(len(a_all))
    test = paired_test(a_all, b_all) if len(a_all) > 1 else None
    p = "" if test is None or test.p_value is None else f"{test.p_value:.2g}"
    versus = ""
    if baseline and name == baseline:
        versus = " — | — |"
    elif baseline and len(base_all) == len(b_all):
        vs = paired_test(base_all, b_all)
        versus = (f" {(sum(b_all) - sum(base_all)) / len(b_all):+.3f} | "
                  f"{'' if vs.p_value is None else f'{vs.p_value:.2g}'} |")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(rasd_means) / len(rasd_means):.3f} | "
                 f"{sum(deltas) / len(deltas):+.3f} | {sum(d > 0 for d in deltas)}/{len(deltas)} | {p} |"
                 + versus)

pairs = "/".join(str(n) for n in sorted(pair_counts)) or "no"
print("| candidate | " + " | ".join(f"{NAMES[ds]}: scratch → RaSD" for ds in DATASETS)
      + f" | mean RaSD | mean Δ | Δ > 0 | paired p ({pairs} pairs) |"
      + (f" RaSD - {Path(baseline).name} | p vs {Path(baseline).name} |" if baseline else ""))
print("| --- |" + " --- |" * (len(DATASETS) + 4 + 2 * bool(baseline)))
print("\n".join(lines))
