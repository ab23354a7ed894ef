"""Intervals and tests for the scores kerascnn reports: Wilson (one run's accuracy), Student-t
(replicates), paired t and McNemar (two configurations), Holm (many comparisons); SciPy computes
the distributions."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / total``, clipped so that it holds the
    estimate (at 0% and 100% rounding would put a bound a hair inside it)."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def t_interval(values: list[float]) -> list[float]:
    """95% Student-t interval of the mean of ``values`` (two or more fractions), clipped to [0, 1]."""
    from scipy import stats

    n = len(values)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [max(0.0, mean - half), min(1.0, mean + half)]  # scores are fractions


def paired_t(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of the paired t-test of ``a`` against ``b`` (two or more pairs); None when every
    pair differs by the same amount (t is undefined)."""
    from scipy import stats

    if np.std(np.subtract(a, b)) == 0:
        return None
    return float(stats.ttest_rel(a, b).pvalue)


def mcnemar_exact(right_a: np.ndarray, right_b: np.ndarray) -> tuple[float, int, int]:
    """McNemar's exact test of two classifiers on the same images (``right_*``: which each got
    right): the two-sided p and the discordant counts (only a right, only b right)."""
    from scipy import stats

    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return p, only_a, only_b


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error over all the comparisons)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
