"""Summary statistics over seeds: mean, 95 % confidence interval, paired test.

The unit of replication is a seed: one fine-tuning run gives one mean test Dice. With K seeds:

* :func:`mean_ci`: the mean and a two-sided t-distribution confidence interval
  ``mean +- t_{0.975, K-1} * sd / sqrt(K)`` (few seeds, unknown variance: t, not normal). Undefined
  (NaN) for K < 2.
* :func:`paired_test`: a two-sided **paired t-test** on the per-seed differences. Pairing by seed
  is what makes the comparison fair: seed s gives both inits the same patches, augmentations and
  head initialisation, so the seed-to-seed noise largely cancels in the difference. The t-test
  rather than the Wilcoxon signed-rank test because the affordable seed counts are tiny: with
  K <= 5 pairs Wilcoxon's smallest possible two-sided p is 2 / 2^K >= 0.0625, so it could never
  report a difference at the 5 % level, whatever the data; the t-test's assumption (roughly normal
  differences) is the price, stated in the docs. Degenerate cases: K < 2 gives NaN; all
  differences exactly zero gives p = 1 (no evidence of a difference); identical non-zero
  differences give NaN (the t statistic is infinite; report the difference instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["MeanCI", "mean_ci", "paired_test", "PairedTest"]


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": _clean(self.mean), "ci95": [_clean(self.low), _clean(self.high)], "n": self.n}


@dataclass(frozen=True)
class PairedTest:
    p_value: float
    mean_difference: float  # mean of (b - a)
    n: int
    test: str = "paired t-test (two-sided)"

    def as_dict(self) -> dict:
        return {"p_value": _clean(self.p_value), "mean_difference": _clean(self.mean_difference),
                "n": self.n, "test": self.test}


def _clean(x: float) -> float | None:
    """JSON has no NaN: undefined values become null."""
    return None if x is None or math.isnan(x) else float(x)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution confidence interval of ``values`` (NaN entries are an error)."""
    from scipy import stats

    xs = [float(v) for v in values]
    if any(math.isnan(v) for v in xs):
        raise ValueError("mean_ci got NaN values; drop undefined runs before summarising")
    n = len(xs)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    mean = sum(xs) / n
    if n < 2:
        return MeanCI(mean, float("nan"), float("nan"), n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired two-sided t-test of ``b`` against ``a`` (same length, matched by seed)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(diffs)
    mean_diff = sum(diffs) / n if n else float("nan")
    if n < 2:
        return PairedTest(float("nan"), mean_diff, n)
    if all(d == diffs[0] for d in diffs):
        return PairedTest(1.0 if diffs[0] == 0 else float("nan"), mean_diff, n)
    result = stats.ttest_rel(list(b), list(a))
    return PairedTest(float(result.pvalue), mean_diff, n)
