"""Interval arithmetic on hand cases."""

from __future__ import annotations

import math

import pytest

from thinktuning.eval.stats import mean_ci, paired_bootstrap, permutation_p, significant, welch_interval


def test_t_interval_of_three_seeds():
    # mean 2, sample sd 1, t(0.975, df 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.4843
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert (lo, hi) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))


def test_one_seed_has_no_interval_and_is_never_significant():
    m, lo, hi = mean_ci([0.4])
    assert m == 0.4 and math.isnan(lo) and math.isnan(hi)
    assert not significant(lo, hi)


def test_a_constant_shift_has_a_zero_width_interval():
    b = [[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    a = [[x + 0.1 for x in row] for row in b]
    d, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert (d, lo, hi) == pytest.approx((0.1, 0.1, 0.1))
    assert significant(lo, hi)


def test_two_items_one_seed_by_hand():
    # a = [1, 0], b = [0, 0]: a replicate draws 2 items with replacement; the difference is the share of item 0
    # drawn: 0 (p 1/4), 0.5 (p 1/2), 1 (p 1/4). The 2.5% and 97.5% percentiles are therefore 0 and 1.
    d, lo, hi = paired_bootstrap([[1.0, 0.0]], [[0.0, 0.0]], n_boot=4000)
    assert d == 0.5 and lo == 0.0 and hi == 1.0
    assert not significant(lo, hi)


def test_a_single_seed_baseline_is_broadcast_against_several_seeds():
    d, lo, hi = paired_bootstrap([[1.0] * 5, [1.0] * 5, [0.0] * 5], [[0.0] * 5], n_boot=2000)
    # seeds drawn with replacement from {1, 1, 0}: the mean ranges over {0, 1/3, 2/3, 1}; items do not matter
    assert d == pytest.approx(2 / 3)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)


def test_items_must_match():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([[1.0, 0.0]], [[1.0]])


def test_welch_interval_by_hand():
    # a = [1, 2, 3] (var 1), b = [0, 0, 0, 0] (var 0): se = sqrt(1/3), df = (1/3)^2 / ((1/3)^2 / 2) = 2 -> t 4.303
    d, lo, hi = welch_interval([1.0, 2.0, 3.0], [0.0] * 4)
    assert d == 2.0
    assert (lo, hi) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))


def test_welch_degrees_of_freedom_are_rounded_down():
    # var 1 and var 4 with 3 seeds each: se^2 = 1/3 + 4/3 = 5/3; df = (5/3)^2 / ((1/9 + 16/9) / 2) = 2.94 -> 2
    d, lo, hi = welch_interval([1.0, 2.0, 3.0], [0.0, 2.0, 4.0])
    assert d == pytest.approx(0.0)
    assert hi == pytest.approx(4.303 * math.sqrt(5 / 3))
    assert not significant(lo, hi)


def test_welch_with_one_seed_on_each_side_has_no_interval():
    d, lo, hi = welch_interval([0.3], [0.1])
    assert d == pytest.approx(0.2) and math.isnan(lo) and math.isnan(hi)


def test_permutation_p_by_hand():
    # 3 + 3 fully separated seeds: of the 20 splits, only the observed one and its mirror are as extreme
    assert permutation_p([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == pytest.approx(2 / 20)
    # identical groups: every split is at least as extreme as a difference of 0
    assert permutation_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    # 2 + 1: splits {a,b|c} d=|1.5-c|... pooled [0, 1, 5], a = [5, 1] (mean 3) vs b = [0]: |3 - 0| = 3;
    # other splits: [5, 0] vs [1]: 1.5; [1, 0] vs [5]: 4.5 -> 2 of 3 are at least 3
    assert permutation_p([5.0, 1.0], [0.0]) == pytest.approx(2 / 3)
