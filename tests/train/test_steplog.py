"""What a step logs (``thinktuning.train.steplog``): per-step increments of a backend's running totals."""

from __future__ import annotations

from thinktuning.train.steplog import CounterDeltas


def test_counter_deltas_are_increments_per_step() -> None:
    deltas = CounterDeltas("teacher/")
    assert deltas(None) == {} and deltas({}) == {}  # a backend without counters logs nothing
    assert deltas({"requests": 3, "retries": 1}) == {"teacher/requests": 3, "teacher/retries": 1}
    assert deltas({"requests": 3, "retries": 1}) == {"teacher/requests": 0, "teacher/retries": 0}
    assert deltas({"requests": 7, "retries": 2}) == {"teacher/requests": 4, "teacher/retries": 1}


def test_a_counter_that_appears_later_counts_from_zero() -> None:
    deltas = CounterDeltas("x/")
    deltas({"a": 2})
    assert deltas({"a": 2, "b": 5}) == {"x/a": 0, "x/b": 5}
