"""Error bars for comparisons: a t-interval of a mean across seeds, and a paired bootstrap of a difference.

Why these two: seeds are few (3-5), so a mean across seeds gets Student's t, not a normal interval; and two arms
evaluated on the *same* items (and trained with the same seeds) are compared item by item, resampling items and
seeds together, which removes the items' own difficulty from the noise. A difference is called significant only
when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}
"""Two-sided 95% quantiles of Student's t by degrees of freedom (above 30: the normal 1.96)."""


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the 95% t-interval of the mean of ``values`` (NaN bounds for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = T_975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return m, m - half, m + half


def paired_bootstrap(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0,
) -> tuple[float, float, float]:
    """``(difference, low, high)`` of mean(a) - mean(b), with a 95% percentile interval.

    ``a`` and ``b`` are per-seed lists of per-item scores over the same items in the same order. Each replicate
    draws items with replacement (the same items for both arms) and seeds with replacement: jointly when both arms
    have the same number of seeds (they were trained with the same seeds), independently otherwise; an arm with
    one seed (zero-shot, greedy) is that seed every time.
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[1] != xb.shape[1] or xa.shape[1] == 0:
        raise ValueError(f"need (seeds, items) score tables over the same items, got {xa.shape} and {xb.shape}")
    observed = float(xa.mean() - xb.mean())
    rng = np.random.default_rng(seed)
    n_items, sa, sb = xa.shape[1], xa.shape[0], xb.shape[0]
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    seeds_a = rng.integers(0, sa, size=(n_boot, sa))
    seeds_b = seeds_a if sa == sb else rng.integers(0, sb, size=(n_boot, sb))
    # per replicate: mean over the drawn seeds of the mean over the drawn items
    item_means_a = np.stack([xa[:, row].mean(axis=1) for row in items])  # (n_boot, seeds)
    item_means_b = np.stack([xb[:, row].mean(axis=1) for row in items])
    diffs = (np.take_along_axis(item_means_a, seeds_a, axis=1).mean(axis=1)
             - np.take_along_axis(item_means_b, seeds_b, axis=1).mean(axis=1))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return observed, float(low), float(high)


def significant(low: float, high: float) -> bool:
    """Whether a 95% interval excludes 0 (NaN bounds: not significant)."""
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)
