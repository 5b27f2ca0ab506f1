"""Summary statistics over seeds: mean, 95 % confidence interval, paired and one-sample tests.

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
* :func:`one_sample_test`: a two-sided **one-sample t-test** of a sample against a fixed value,
  for the frozen-feature probe: pre-trained weights give one deterministic value (the same for
  every seed), a random init a distribution over seeds, so the question is whether the random
  inits' mean differs from that value. Nothing is paired there: the fixed value has no seed-to-seed
  noise to cancel. (Numerically it equals a paired test against the value repeated, since the
  differences are the sample shifted; the label says what is actually tested.) Degenerate cases
  as for the paired test: fewer than 2 values give NaN; a constant sample gives p = 1 when it
  equals the value, else NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["MeanCI", "mean_ci", "paired_test", "one_sample_test", "TTest"]

PAIRED = "paired t-test (two-sided)"
ONE_SAMPLE = "one-sample t-test (two-sided)"


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": _clean(self.mean), "ci95": [_clean(self.low), _clean(self.high)], "n": self.n}


@dataclass(frozen=True)
class TTest:
    p_value: float
    mean_difference: float  # paired: mean of (b - a); one-sample: value - mean of the sample
    n: int
    test: str  # which test (PAIRED, ONE_SAMPLE)

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


def _degenerate(deviations: Sequence[float]) -> float | None:
    """The p-value when a t statistic is undefined: NaN for fewer than 2 values; for deviations
    that are all equal, 1 when they are zero (no evidence of a difference), NaN otherwise
    (infinite t); None when the t-test is defined."""
    if len(deviations) < 2:
        return float("nan")
    if all(d == deviations[0] for d in deviations):
        return 1.0 if deviations[0] == 0 else float("nan")
    return None


def paired_test(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Paired two-sided t-test of ``b`` against ``a`` (same length, matched by seed)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(diffs)
    mean_diff = sum(diffs) / n if n else float("nan")
    p_value = _degenerate(diffs)
    if p_value is None:
        p_value = float(stats.ttest_rel(list(b), list(a)).pvalue)
    return TTest(p_value, mean_diff, n, PAIRED)


def one_sample_test(sample: Sequence[float], value: float) -> TTest:
    """Two-sided one-sample t-test: is the mean of ``sample`` (e.g. a random init's probe Dice
    over seeds) different from the fixed ``value`` (the deterministic pre-trained probe's Dice)?
    ``mean_difference`` is ``value - mean(sample)``."""
    from scipy import stats

    xs = [float(v) for v in sample]
    value = float(value)
    if any(math.isnan(v) for v in xs) or math.isnan(value):
        raise ValueError("one_sample_test got NaN; drop undefined runs before testing")
    n = len(xs)
    mean_diff = value - sum(xs) / n if n else float("nan")
    p_value = _degenerate([v - value for v in xs])
    if p_value is None:
        p_value = float(stats.ttest_1samp(xs, value).pvalue)
    return TTest(p_value, mean_diff, n, ONE_SAMPLE)
