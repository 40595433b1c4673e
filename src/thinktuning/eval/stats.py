"""Error bars for comparisons: a t-interval of a mean across seeds, and a paired bootstrap of a difference.

Why these two: seeds are few (3-5), so a mean across seeds gets Student's t, not a normal interval; and two arms
evaluated on the *same* items (and trained with the same seeds) are compared item by item, resampling items and
seeds together, which removes the items' own difficulty from the noise. A difference is called significant only
when its interval excludes 0.

With 3 seeds a bootstrap over seeds sees at most 3 distinct seed outcomes and so understates how much another seed
could move a result. Two seed-level checks say how far the seeds alone carry a difference: a Welch t-interval of the
difference of seed means, and an exact permutation test over the seed means (with 3 + 3 seeds its smallest two-sided
p is 0.1, so 3 seeds can never pass it at 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

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


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """``(difference, low, high)`` of mean(a) - mean(b) over seed means: Welch's 95% t-interval.

    The Welch-Satterthwaite degrees of freedom are rounded down (a slightly wider, conservative interval). An arm
    with one seed counts as a constant (its variance is unknown, not zero: read such an interval as "if that arm
    were deterministic"); two one-seed arms give NaN bounds.
    """
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        raise ValueError("need at least one seed per arm")
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) if na > 1 else 0.0
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) if nb > 1 else 0.0
    ta, tb = va / na, vb / nb
    diff = ma - mb
    if na == 1 and nb == 1:
        return diff, math.nan, math.nan
    if ta + tb == 0:
        return diff, diff, diff
    parts = [(t, n - 1) for t, n in ((ta, na), (tb, nb)) if n > 1]
    df = max(1, math.floor((ta + tb) ** 2 / sum(t * t / d for t, d in parts if t > 0)))
    half = T_975.get(df, 1.96) * math.sqrt(ta + tb)
    return diff, diff - half, diff + half


def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided p of mean(a) - mean(b) over seed means: the share of all splits of the pooled seeds into
    groups of len(a) and len(b) whose difference is at least as large in absolute value as the observed one."""
    pooled = [*a, *b]
    n, na = len(pooled), len(a)
    total = sum(pooled)
    observed = abs(sum(a) / na - sum(b) / len(b))
    splits = extreme = 0
    for idx in combinations(range(n), na):
        sa = sum(pooled[i] for i in idx)
        splits += 1
        extreme += abs(sa / na - (total - sa) / (n - na)) >= observed - 1e-12
    return extreme / splits
