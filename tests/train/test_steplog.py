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


def _traj(group: int, own: float, reward: float):
    from thinktuning.data.examples import Example
    from thinktuning.rollout.types import Trajectory

    t = Trajectory(Example(id="x", question="q", prompt="p", reference="1"), group, [1], [2], True)
    t.student_correct, t.reward = own, reward
    return t


def test_groups_rescued_counts_groups_whose_only_signal_came_from_guidance() -> None:
    from thinktuning.train.steplog import groups_rescued

    rescued = [_traj(0, 0.0, 0.0), _traj(0, 0.0, 1.0)]     # own rewards all 0; a guided rollout now scores 1
    had_signal = [_traj(1, 1.0, 1.0), _traj(1, 0.0, 1.0)]  # its own rollouts already differed
    still_flat = [_traj(2, 0.0, 0.0), _traj(2, 0.0, 0.0)]  # guidance did not change a reward
    assert groups_rescued(rescued + had_signal + still_flat) == 1


def test_teacher_accounting_counts_flips_and_leaks() -> None:
    from thinktuning.train.steplog import teacher_accounting

    right_kept, right_broken, wrong_fixed, wrong_kept = (_traj(0, 1.0, 1.0), _traj(0, 1.0, 0.0), _traj(1, 0.0, 1.0),
                                                         _traj(1, 0.0, 0.0))
    right_kept.final_correct, right_broken.final_correct, wrong_fixed.final_correct = 1.0, 0.0, 1.0
    wrong_fixed.answer_leak = True
    m = teacher_accounting([right_kept, right_broken, wrong_fixed, wrong_kept])
    assert m == {"guidance/guided_correct": 2, "guidance/right_to_wrong": 1, "guidance/wrong_to_right": 1,
                 "guidance/answer_leaks": 1}


def test_teacher_cost_per_million_tokens_by_hand() -> None:
    from thinktuning.config.schema import TeacherConfig
    from thinktuning.train.steplog import teacher_cost

    counts = {"teacher/tokens_in": 2_000, "teacher/tokens_out": 500}
    assert teacher_cost(counts, TeacherConfig()) == {}  # no price: no cost line
    priced = TeacherConfig(price_in_per_million=3.0, price_out_per_million=15.0)
    assert teacher_cost(counts, priced) == {"teacher/cost": (2_000 * 3.0 + 500 * 15.0) / 1e6}  # 0.0135
    assert teacher_cost(counts, TeacherConfig(price_out_per_million=10.0)) == {"teacher/cost": 0.005}
