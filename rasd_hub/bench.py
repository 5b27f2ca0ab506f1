"""`rasd bench hub`: build time, warm-cache load time and peak memory while loading.

Each model is measured in a fresh Python subprocess. Its weights are saved once and placed in a
Hub cache laid out exactly as huggingface_hub writes it (blobs named by sha256 / git sha1,
snapshots/<commit>/ symlinks), then loaded as ``hf-hub:rasd-bench/NAME@COMMIT`` offline: the
same code path as a real warm cache, sha256 re-verification included. Peak memory is read from
``/proc/self/status`` (VmHWM, reset through ``/proc/self/clear_refs`` before each load), so the
memory numbers need Linux.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_benchmark", "format_table", "seed_hub_cache"]

BENCH_ORG = "rasd-bench"


def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def seed_hub_cache(weights_dir: str | os.PathLike, cache_dir: str | os.PathLike, repo_id: str) -> str:
    """Put a weights directory into a Hub cache as the client would; returns the fake commit."""
    from rasd_hub._io import sha256_file
    from rasd_hub.hub import git_blob_sha1

    weights_dir, cache_dir = Path(weights_dir), Path(cache_dir)
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in weights_dir.iterdir() if p.is_file())
    digests = {p: sha256_file(p) for p in files}  # each file read once
    commit = hashlib.sha1("".join(digests[p] for p in files).encode()).hexdigest()
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for p in files:
        # the client names LFS blobs by sha256 and small files by their git blob sha1
        name = digests[p] if p.suffix == ".safetensors" else git_blob_sha1(p)
        blob = repo_dir / "blobs" / name
        if not blob.exists():
            try:
                os.link(p, blob)
            except OSError:
                blob.write_bytes(p.read_bytes())
        link = snap / p.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snap))
    return commit


def _measure_one(name: str, repeat: int, work_dir: str) -> dict[str, Any]:
    """Runs in the subprocess."""
    import torch

    import rasd_hub
    from rasd_hub._builder import build_model, load_into
    from rasd_hub.hub import fetch_weights

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(work_dir)
    builds = []
    model = rasd_hub.create_model(name)  # untimed: imports torch / MONAI
    for _ in range(repeat):
        del model
        t0 = time.perf_counter()
        model = rasd_hub.create_model(name)
        builds.append(time.perf_counter() - t0)
    wdir = work / name / "weights"
    if not (wdir / "model.safetensors").is_file():
        rasd_hub.save_pretrained(model, wdir, provenance={"note": "random weights for rasd bench hub"})
    del model
    cache = work / "hf-cache"
    repo = f"{BENCH_ORG}/{name}"
    commit = seed_hub_cache(wdir, cache, repo)
    hub_name = f"hf-hub:{repo}@{commit}"
    weights_mib = (wdir / "model.safetensors").stat().st_size / 2**20

    rasd_hub.load(hub_name, offline=True, cache_dir=cache)  # warm the page cache once
    loads, totals, extras, touched = [], [], [], []
    for _ in range(repeat):
        src_cfg = fetch_weights(repo, commit, offline=True, cache_dir=cache, weights=False).config
        model = build_model(src_cfg["architecture"], src_cfg, {}, in_chans=src_cfg["in_chans"])
        peak_ok = _reset_peak()
        rss0 = _status_mib("VmRSS:")
        t0 = time.perf_counter()
        src = fetch_weights(repo, commit, offline=True, cache_dir=cache)
        load_into(model, src)
        loads.append(time.perf_counter() - t0)
        if peak_ok and rss0 is not None:
            extras.append(_status_mib("VmHWM:") - rss0)
        with torch.no_grad():  # page every weight in, as a first forward pass would
            sum(float(p.sum()) for p in model.parameters())
        if rss0 is not None:
            touched.append(_status_mib("VmRSS:") - rss0)
        del model, src
        t0 = time.perf_counter()
        m = rasd_hub.load(hub_name, offline=True, cache_dir=cache)
        totals.append(time.perf_counter() - t0)
        del m
    return {
        "model": name,
        "params_m": rasd_hub.model_info(name)["num_params"] / 1e6,
        "weights_mib": round(weights_mib, 1),
        "build_s": round(statistics.median(builds), 3),
        "load_s": round(statistics.median(loads), 3),
        "load_total_s": round(statistics.median(totals), 3),
        "peak_extra_mib": round(max(extras), 1) if extras else None,
        "peak_extra_ratio": round(max(extras) / weights_mib, 3) if extras else None,
        "rss_after_touch_mib": round(statistics.median(touched), 1) if touched else None,
        "threads": torch.get_num_threads(),
    }


def run_benchmark(models: list[str], *, repeat: int = 3, work_dir: str | None = None) -> dict[str, Any]:
    """Measure each model in a fresh subprocess; returns rows plus machine info."""
    import platform

    from rasd_hub._registry import get_arch

    for m in models:
        get_arch(m)  # fail early on bad names
    rows = []
    with tempfile.TemporaryDirectory(prefix="rasd-bench-hub-") as tmp:
        work = work_dir or tmp
        for m in models:
            code = ("import json, sys; from rasd_hub.bench import _measure_one; "
                    f"print('RESULT ' + json.dumps(_measure_one({m!r}, {int(repeat)}, {str(work)!r})))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                from rasd_hub.errors import RasdError

                raise RasdError(f"benchmark of {m} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[-1][len("RESULT "):]))
    return {"rows": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                      "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}}


def format_table(results: dict[str, Any]) -> str:
    head = (f"{'model':<14} {'params':>8} {'weights':>9} {'build':>8} {'load':>8} {'load+build':>10} "
            f"{'peak extra':>11} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in results["rows"]:
        extra = f"{r['peak_extra_mib']:.0f} MiB" if r["peak_extra_mib"] is not None else "n/a"
        ratio = f"{r['peak_extra_ratio']:.2f}" if r["peak_extra_ratio"] is not None else "n/a"
        lines.append(f"{r['model']:<14} {r['params_m']:>7.1f}M {r['weights_mib']:>5.0f} MiB "
                     f"{r['build_s']:>7.3f}s {r['load_s']:>7.3f}s {r['load_total_s']:>9.3f}s "
                     f"{extra:>11} {ratio:>6}")
    m = results["machine"]
    lines.append(f"({m['cpus']} CPUs, {m['platform']}, Python {m['python']}, {m['date']}; "
                 "load = resolve + sha256 re-verify + read + assign from a warm Hub cache; "
                 "peak extra = VmHWM - RSS before loading)")
    return "\n".join(lines)
