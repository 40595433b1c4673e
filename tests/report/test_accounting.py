"""The teacher's accounting totalled over a run, by hand."""

from __future__ import annotations

import math

from thinktuning.report.accounting import rates, totals


def test_totals_sum_each_metric_over_the_steps_that_logged_it():
    lines = [
        {"step": 1, "guidance/guided": 4, "guidance/guided_correct": 1, "teacher/ms": 1500, "teacher/cost": 0.25},
        {"step": 2, "guidance/guided": 2, "guidance/guided_correct": math.nan, "teacher/ms": 500},
        {"step": 3, "loss": 0.1},  # a step that logged none of them
    ]
    t = totals(lines)
    assert t == {"guidance/guided": 6, "guidance/guided_correct": 1, "teacher/ms": 2.0, "teacher/cost": 0.25}
    assert "guidance/answer_leaks" not in t  # never logged: absent, not 0


def test_rates_per_guided_rollout():
    assert rates({"guidance/guided": 8, "guidance/guided_correct": 2, "guidance/answer_leaks": 1}) == {
        "guided rollouts that end correct": 0.25, "answer leaks per guided rollout": 0.125}
    assert rates({"guidance/guided": 0, "guidance/guided_correct": 0}) == {}
    assert totals([{"guidance/guided": True}]) == {}  # a flag is not a count
