"""Metrics of a run: one JSON object per logged step in ``OUT/metrics.jsonl`` (and TensorBoard
event files in ``OUT/tensorboard`` when the ``tensorboard`` package happens to be installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rasd_hub._io import write_text_atomic

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Append-only JSON-lines log. On resume, entries after the resumed step are dropped first
    (they are recomputed, identically), so a run that was interrupted between a log line and its
    checkpoint has no duplicated steps; the entries up to that step are kept. The file is
    rewritten atomically, so a kill during the rewrite loses nothing. ``resume_step=None``: a
    fresh run from step 0, which starts a new file."""

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            write_text_atomic(self.path, "")
        elif self.path.exists():
            records = read_metrics(self.path)
            kept = [r for r in records if r.get("step", 0) <= resume_step]
            if len(kept) < len(records) or not self.path.read_bytes().endswith(b"\n"):
                write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = _tensorboard_writer(self.path.parent / "tensorboard") if tensorboard else None

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a torn last line (killed mid-write) is ignored."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _tensorboard_writer(log_dir: Path):
    try:
        import tensorboard  # noqa: F401  (SummaryWriter needs the package, not only torch)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
