"""``rasd synth`` and ``rasd bench synth``.

Heavy modules (torch, the engine) are imported inside the run functions so ``rasd --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rasd_hub.errors import RasdValueError

PRESET_CHOICES = ("official", "paper")


def configure_synth(parser):
    """Generate synthetic image/label pairs and a preview.

    Writes NUM pairs to OUT: NIfTI for 3D (STEM_image.nii.gz float32, STEM_label.nii.gz uint8),
    PNG for 2D, plus preview.png (image | label, mid planes) and config.json. Everything is
    validated first and written to a temporary folder that is renamed to OUT at the end, so a
    failed run leaves nothing behind. OUT must not exist or be an empty folder.

    example: rasd synth --dim 3 --size 96 128 64 --classes 8 --num 4 --out synth3d
    """
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3, help="2D or 3D (default 3)")
    parser.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="one size or one per axis, last axis = Z (default 128 in 3D, 512 in 2D)")
    parser.add_argument("--classes", type=int, help="number of label classes (default 8 in 3D, 16 in 2D)")
    parser.add_argument("--num", type=int, default=4, help="number of pairs to write (default 4)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--preset", choices=PRESET_CHOICES, default="official",
                        help="official: what the released code does (default); paper: Methods 4.1")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=2, help="samples generated at once (default 2)")
    parser.set_defaults(func=run_synth)


def run_synth(args) -> int:
    for name in ("num", "batch_size"):
        if getattr(args, name) < 1:
            raise RasdValueError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.seed < 0:
        raise RasdValueError(f"--seed must be non-negative (got {args.seed})")
    out = args.out
    if out.exists() and not out.is_dir():
        raise RasdValueError(f"--out {out} is a file, not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise RasdValueError(f"--out {out} already exists and is not empty: choose a new folder or empty it")

    from pretraining.synthesis import SynthesisConfig, SyntheticStream, resolve_device
    from pretraining.synthesis.export import preview_grid, write_pair

    config = SynthesisConfig.from_preset(args.preset, dim=args.dim, size=args.size, num_classes=args.classes)
    device = resolve_device(args.device)

    from rasd_hub._io import atomic_dir

    # the folder appears complete or not at all (a killed run leaves no half-written --out)
    with atomic_dir(out, replaceable=()) as staging:
        stream = SyntheticStream(config, batch_size=min(args.batch_size, args.num), seed=args.seed, device=device)
        shown_images, shown_labels, written = [], [], 0
        while written < args.num:
            images, labels = next(stream)
            for image, label in zip(images, labels):
                if written == args.num:
                    break
                write_pair(image, label, staging, f"synth_{written:04d}")
                if len(shown_images) < 6:
                    shown_images.append(image.cpu())
                    shown_labels.append(label.cpu())
                written += 1
        import torch

        preview_grid(torch.stack(shown_images), torch.stack(shown_labels)).save(staging / "preview.png")
        record = {"preset": args.preset, "seed": args.seed, "device": str(device), "num": args.num,
                  "batch_size": stream.batch_size, "config": config.to_dict()}
        (staging / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    kind = "NIfTI" if args.dim == 3 else "PNG"
    print(f"wrote {args.num} {kind} image/label pairs of size {'x'.join(map(str, config.size))} "
          f"({config.num_classes} classes, preset {args.preset}) and preview.png to {out}")
    return 0


def configure_bench_synth(parser):
    """Measure synthesis throughput.

    Times the engine for every case (default: 3D 128^3 with 8 classes and 2D 512^2 with 16
    classes) and preset, and, on the official preset, a faithful per-sample full-resolution
    re-implementation of the released code (benchmark only) in the same run, then prints the
    ratio and how the label/image statistics of the two compare (tolerances: stats.py).
    Times are wall-clock per volume after one warm-up batch, the best of --repeats; the
    statistics use at least --stats-samples samples of each implementation.
    """
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records instead of a table")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per case (default 3)")
    parser.add_argument("--sizes", nargs="+", default=["3:128:8", "2:512:16"], metavar="DIM:SIZE[:CLASSES]",
                        help="cases to run (default 3:128:8 2:512:16)")
    parser.add_argument("--presets", nargs="+", choices=PRESET_CHOICES, default=list(PRESET_CHOICES))
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--lattice-spacing", type=int,
                        help="override the presets' mask_lattice_spacing (1 = exact at every voxel)")
    parser.add_argument("--stats-samples", type=int, default=16,
                        help="samples per implementation behind the statistics (default 16; per-sample "
                             "statistics vary a lot, so a handful says little)")
    parser.add_argument("--no-reference", action="store_true", help="skip the released-code reference")
    parser.set_defaults(func=run_bench_synth)


def _parse_case(text: str) -> tuple[int, int, int | None]:
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or numbers[0] not in (2, 3):
        raise RasdValueError(f"--sizes entry {text!r} is not DIM:SIZE[:CLASSES], e.g. 3:128:8 or 2:512")
    return numbers[0], numbers[1], (numbers[2] if len(numbers) == 3 else None)


def run_bench_synth(args) -> int:
    if min(args.repeats, args.batch_size, args.stats_samples) < 1:
        raise RasdValueError("--repeats, --batch-size and --stats-samples must be at least 1")
    cases = [_parse_case(text) for text in args.sizes]

    import dataclasses

    import torch

    from pretraining.synthesis import SynthesisConfig, resolve_device
    from pretraining.synthesis.stats import compare

    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = []
    for dim, size, classes in cases:
        for preset in args.presets:
            config = SynthesisConfig.from_preset(preset, dim=dim, size=size, num_classes=classes)
            if args.lattice_spacing is not None:
                config = dataclasses.replace(config, mask_lattice_spacing=args.lattice_spacing)
            configs.append((preset, config))

    records = []
    for preset, config in configs:
        base = {"dim": config.dim, "size": list(config.size), "classes": config.num_classes, "preset": preset,
                "device": str(device), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                "lattice_spacing": config.mask_lattice_spacing, "load_average": _load_average()}
        batches = max(args.repeats, -(-args.stats_samples // args.batch_size))
        fast, fast_stats = _time_engine(config, args.batch_size, args.repeats, batches, device)
        record = {**base, "implementation": "rasd-hub", "s_per_volume": fast,
                  "stats_samples": batches * args.batch_size}
        records.append(record)
        if preset == "official" and not args.no_reference:
            slow, slow_stats = _time_reference(config, args.batch_size, args.repeats, batches, device)
            record["speedup_vs_reference"] = slow / fast
            record["stats_vs_reference"] = compare(fast_stats[0], slow_stats[0], fast_stats[1], slow_stats[1])
            records.append({**base, "implementation": "released (reference)", "s_per_volume": slow,
                            "lattice_spacing": None})
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        _print_table(records)
    return 0


def _load_average():
    """The 1-minute load average when the case starts (None where the OS has none): timings on a
    shared CPU depend on it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _print_table(records: list[dict]) -> None:
    header = ("implementation", "preset", "dim", "size", "classes", "device", "batch", "threads", "k",
              "load", "s/volume", "speed-up")
    rows = [header]
    for r in records:
        rows.append((r["implementation"], r["preset"], str(r["dim"]), "x".join(map(str, r["size"])),
                     str(r["classes"]), r["device"], str(r["batch_size"]), str(r["threads"]),
                     str(r["lattice_spacing"] or "-"), str(r.get("load_average")), f"{r['s_per_volume']:.4f}",
                     f"{r['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in r else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for r in records:
        if "stats_vs_reference" in r:
            print(f"\nstatistics, rasd-hub vs released reference ({r['dim']}D {'x'.join(map(str, r['size']))}, "
                  f"{r['classes']} classes; {r['stats_samples']} samples each):")
            for s in r["stats_vs_reference"]:
                limit = f"{s['kind']} <= {s['tolerance']}"
                noise = f"  z {s['z']:+.1f}" if "z" in s else ""
                print(f"  {s['statistic']:<24} {s['fast']:.4f} vs {s['reference']:.4f}  "
                      f"diff {s['difference']:.4f} ({limit})  {'ok' if s['ok'] else 'OUTSIDE'}{noise}")
            print("  (z: difference / its standard error; |z| < 2 is within sampling noise; "
                  "more --stats-samples resolve smaller differences)")



def _time_engine(config, batch_size: int, repeats: int, batches: int, device):
    """Best seconds per volume over the first ``repeats`` batches (after a warm-up), and the
    statistics of ``batches`` batches."""
    import torch

    from pretraining.synthesis import synthesize
    from pretraining.synthesis.stats import standard_errors, summarize

    generator = torch.Generator(device=device).manual_seed(0)
    synthesize(config, batch_size, generator=generator, device=device)
    best, images, labels = float("inf"), [], []
    for index in range(batches):
        _sync(device)
        start = time.perf_counter()
        image, label = synthesize(config, batch_size, generator=generator, device=device)
        _sync(device)
        if index < repeats:
            best = min(best, (time.perf_counter() - start) / batch_size)
        images.append(image.cpu())
        labels.append(label.cpu())
    images, labels = torch.cat(images), torch.cat(labels)
    return best, (summarize(images, labels, config.num_classes), standard_errors(images, labels, config.num_classes))


def _time_reference(config, batch_size: int, repeats: int, batches: int, device):
    """The same for the released algorithm, one sample at a time (as the release generates)."""
    import torch

    from pretraining.bench_synth_reference import reference_sample
    from pretraining.synthesis.stats import standard_errors, summarize

    generator = torch.Generator(device=device).manual_seed(0)
    reference_sample(config.size, config.num_classes, generator, device)
    best, images, labels = float("inf"), [], []
    for index in range(batches):
        _sync(device)
        start = time.perf_counter()
        batch = [reference_sample(config.size, config.num_classes, generator, device) for _ in range(batch_size)]
        _sync(device)
        if index < repeats:
            best = min(best, (time.perf_counter() - start) / batch_size)
        images += [image.cpu() for image, _ in batch]
        labels += [label.cpu() for _, label in batch]
    images, labels = torch.cat(images), torch.cat(labels)
    return best, (summarize(images, labels, config.num_classes), standard_errors(images, labels, config.num_classes))


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
