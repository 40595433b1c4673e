"""Guidance rules (docs/method.md, steps 2 and 4) against values worked out by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from thinktuning.guidance.rules import (
    guidance_probability,
    guided_count,
    peak_probability,
    select_guided,
    shaped_mask,
    splice,
)

# --------------------------------------------------------------------------------------------- p schedule
# total_steps = 30, decay_fraction = 1/3  ->  horizon = 10 steps; linear p = 0.10 + (0.01 - 0.10) * step / 10
# cutoff threshold: p_end + epsilon = 0.01 + 0.05 = 0.06

LINEAR = {"total_steps": 30, "decay_fraction": 1 / 3}


def test_linear_step_0_is_p_start() -> None:
    assert guidance_probability(0, **LINEAR) == pytest.approx(0.10)


def test_linear_step_4_is_still_on() -> None:
    # 0.10 - 0.09 * 0.4 = 0.064 > 0.06
    assert guidance_probability(4, **LINEAR) == pytest.approx(0.064)


def test_linear_step_5_is_cut_off() -> None:
    # 0.10 - 0.09 * 0.5 = 0.055 <= 0.06  ->  off
    assert guidance_probability(5, **LINEAR) == 0.0


def test_linear_cutoff_is_for_good() -> None:
    assert [guidance_probability(s, **LINEAR) for s in range(5, 30)] == [0.0] * 25


def test_linear_steps_1_to_3_hand_values() -> None:
    # 0.091, 0.082, 0.073
    got = [guidance_probability(s, **LINEAR) for s in (1, 2, 3)]
    assert got == pytest.approx([0.091, 0.082, 0.073])


def test_linear_without_cutoff_reaches_p_end_and_stays() -> None:
    assert guidance_probability(5, **LINEAR, cutoff_epsilon=None) == pytest.approx(0.055)
    assert guidance_probability(10, **LINEAR, cutoff_epsilon=None) == pytest.approx(0.01)
    assert guidance_probability(29, **LINEAR, cutoff_epsilon=None) == pytest.approx(0.01)


def test_step_29_with_cutoff_is_off() -> None:
    assert guidance_probability(29, **LINEAR) == 0.0


def test_cutoff_exactly_at_threshold_switches_off() -> None:
    # p_start 0.10, p_end 0.0, epsilon 0.05, horizon 10: step 5 -> 0.05 exactly == p_end + eps -> off
    kw = {"p_end": 0.0, "decay_fraction": 1 / 3, "cutoff_epsilon": 0.05}
    assert guidance_probability(5, 30, **kw) == 0.0
    # step 4 -> 0.06 > 0.05 -> on
    assert guidance_probability(4, 30, **kw) == pytest.approx(0.06)


def test_constant_schedule() -> None:
    for step in (0, 7, 29):
        assert guidance_probability(step, 30, schedule="constant", p_start=0.3) == pytest.approx(0.3)


def test_cosine_midpoint_without_cutoff() -> None:
    # frac = 0.5 -> cos(pi/2) = 0 -> p_end + (p_start - p_end) * 0.5 = 0.01 + 0.045 = 0.055
    got = guidance_probability(5, schedule="cosine", cutoff_epsilon=None, **LINEAR)
    assert got == pytest.approx(0.055)


def test_cosine_ends_hand_values() -> None:
    assert guidance_probability(0, schedule="cosine", cutoff_epsilon=None, **LINEAR) == pytest.approx(0.10)
    assert guidance_probability(10, schedule="cosine", cutoff_epsilon=None, **LINEAR) == pytest.approx(0.01)
    # 60 steps -> horizon 20; step 5: frac 0.25, cos(pi/4) = 0.7071 -> 0.01 + 0.09 * 0.5 * 1.7071 = 0.086820
    got = guidance_probability(5, 60, schedule="cosine", decay_fraction=1 / 3, cutoff_epsilon=None)
    assert got == pytest.approx(0.0868198, abs=1e-6)


def test_short_run_horizon_is_at_least_one_step() -> None:
    # total 2, fraction 1/3 -> horizon max(1, 0.667) = 1: step 0 -> 0.10, step 1 -> p_end
    assert guidance_probability(0, 2, cutoff_epsilon=None) == pytest.approx(0.10)
    assert guidance_probability(1, 2, cutoff_epsilon=None) == pytest.approx(0.01)


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError, match="unknown guidance schedule 'exp'"):
        guidance_probability(0, 30, schedule="exp")


@pytest.mark.parametrize(
    ("schedule", "p_start", "p_end", "cutoff", "peak"),
    [
        ("linear", 0.10, 0.01, 0.05, 0.10),  # the recipe: starts above the threshold 0.06
        ("linear", 0.06, 0.01, 0.05, 0.0),  # exactly at the threshold: off from step 0
        ("constant", 0.05, 0.05, 0.05, 0.0),  # p stays 0.05, the threshold is 0.05 + 0.05 = 0.10
        ("constant", 0.25, 0.01, 0.05, 0.25),
        ("linear", 0.02, 0.50, 0.05, 0.0),  # rising, under a cutoff: below 0.55 at every step
        ("linear", 0.0, 0.2, None, 0.2),  # rising without a cutoff: reaches p_end
        ("constant", 0.0, 0.2, None, 0.0),  # constant ignores p_end
        ("cosine", 0.3, 0.1, None, 0.3),
        ("cosine", 0.0, 0.0, None, 0.0),
    ],
)
def test_peak_probability_hand_values(schedule, p_start, p_end, cutoff, peak) -> None:
    assert peak_probability(schedule, p_start, p_end, cutoff) == pytest.approx(peak)


@pytest.mark.parametrize("schedule", ["linear", "constant", "cosine"])
@pytest.mark.parametrize("cutoff", [None, 0.0, 0.05])
def test_peak_probability_is_the_largest_p_of_any_step(schedule, cutoff) -> None:
    """Against the schedule itself, over a run long enough to reach p_end (30 steps, horizon 10)."""
    for p_start in (0.0, 0.05, 0.06, 0.1, 0.5):
        for p_end in (0.0, 0.01, 0.05, 0.2):
            ps = [guidance_probability(s, schedule=schedule, p_start=p_start, p_end=p_end, cutoff_epsilon=cutoff,
                                       **LINEAR) for s in range(30)]
            assert max(ps) == pytest.approx(peak_probability(schedule, p_start, p_end, cutoff)), (p_start, p_end)


# --------------------------------------------------------------------------------------------- how many


@pytest.mark.parametrize(
    ("eligible", "p", "min_per_group", "expected"),
    [
        (5, 0.1, 1, 1),   # floor(0.5) = 0 -> max(1, 0) = 1
        (5, 0.5, 1, 2),   # floor(2.5) = 2
        (0, 0.1, 1, 0),   # nobody eligible
        (5, 0.0, 1, 0),   # guidance off
        (3, 1.0, 1, 3),   # everyone
        (10, 0.3, 1, 3),  # 10 * 0.3 = 3.0000000000000004 in floats -> 3
        (10, 0.7, 1, 7),  # 10 * 0.7 = 7.000000000000001 -> 7
        (5, 0.1, 0, 0),   # no minimum: floor(0.5) = 0
        (5, 0.5, 0, 2),
        (2, 0.1, 3, 2),   # the minimum never exceeds the eligible count
        (4, 0.6, 1, 2),   # floor(2.4) = 2
    ],
)
def test_guided_count(eligible: int, p: float, min_per_group: int, expected: int) -> None:
    assert guided_count(eligible, p, min_per_group) == expected


# ---------------------------------------------------------------------------------------------- whom


def test_select_guided_only_finished_and_k_per_group() -> None:
    finished = [True, False, True, True, False, False, False, False, False, False, False, True]
    chosen = select_guided(finished, 4, 0.1, random.Random(0))
    # group 0: eligible {0, 2, 3} -> 1; group 1: none -> 0; group 2: eligible {11} -> 1
    assert len(chosen) == 2
    assert chosen[0] in {0, 2, 3}
    assert chosen[1] == 11
    assert all(finished[i] for i in chosen)


def test_select_guided_indices_stay_in_their_group() -> None:
    finished = [True] * 15
    chosen = select_guided(finished, 5, 0.5, random.Random(3))
    # k = floor(5 * 0.5) = 2 per group, 3 groups
    assert len(chosen) == 6
    for g in range(3):
        in_group = [i for i in chosen if 5 * g <= i < 5 * (g + 1)]
        assert len(in_group) == 2
        assert len(set(in_group)) == 2
    assert chosen == sorted(chosen)


def test_select_guided_p_zero_chooses_nobody() -> None:
    assert select_guided([True] * 10, 5, 0.0, random.Random(0)) == []


def test_select_guided_is_deterministic_for_a_seed() -> None:
    finished = [True, True, False, True, True] * 6
    a = select_guided(finished, 5, 0.5, random.Random("seed-guide-3"))
    b = select_guided(finished, 5, 0.5, random.Random("seed-guide-3"))
    assert a == b
    # and not constant across seeds
    draws = {tuple(select_guided(finished, 5, 0.5, random.Random(s))) for s in range(20)}
    assert len(draws) > 1


def test_select_guided_is_uniform_over_eligible() -> None:
    finished = [True, True, False, True, True]
    rng = random.Random(1234)
    counts: Counter[int] = Counter()
    n = 2000
    for _ in range(n):
        (i,) = select_guided(finished, 5, 0.1, rng)
        counts[i] += 1
    assert set(counts) == {0, 1, 3, 4}
    # expected 500 each; binomial sd = sqrt(2000 * 0.25 * 0.75) ~= 19.4, so +-100 is > 5 sd
    for i in (0, 1, 3, 4):
        assert 400 <= counts[i] <= 600, counts


def test_select_guided_rejects_ragged_groups() -> None:
    with pytest.raises(ValueError, match="7 rollouts do not split into groups of 5"):
        select_guided([True] * 7, 5, 0.1, random.Random(0))


# ---------------------------------------------------------------------------------------------- splice

EOS = 2


def test_splice_removes_trailing_eos_and_appends_teacher_and_eos() -> None:
    s = splice([10, 11, 12, EOS], [20, 21, 22], EOS)
    assert s.response_ids == [10, 11, 12, 20, 21, 22, EOS]
    assert s.teacher_mask == [0, 0, 0, 1, 1, 1, 1]
    assert (s.student_len, s.teacher_len) == (3, 4)
    assert s.feedback_truncated is False


def test_splice_keeps_a_student_tail_that_is_not_eos() -> None:
    s = splice([10, 11, 12], [20], EOS)
    assert s.response_ids == [10, 11, 12, 20, EOS]
    assert s.teacher_mask == [0, 0, 0, 1, 1]
    assert s.student_len == 3


def test_splice_removes_only_one_trailing_eos_and_keeps_inner_eos() -> None:
    s = splice([EOS, 10, EOS, EOS], [20], EOS)
    assert s.response_ids == [EOS, 10, EOS, 20, EOS]
    assert s.student_len == 3


def test_splice_does_not_modify_inputs() -> None:
    student, teacher = [10, 11, EOS], [20, 21]
    splice(student, teacher, EOS, max_feedback_tokens=1)
    assert student == [10, 11, EOS]
    assert teacher == [20, 21]


def test_splice_truncates_long_feedback() -> None:
    s = splice([10, EOS], [20, 21, 22, 23, 24], EOS, max_feedback_tokens=3)
    assert s.response_ids == [10, 20, 21, 22, EOS]
    assert s.teacher_mask == [0, 1, 1, 1, 1]
    assert s.feedback_truncated is True
    assert s.teacher_len == 4


def test_splice_feedback_exactly_at_limit_is_not_truncated() -> None:
    s = splice([10, EOS], [20, 21, 22], EOS, max_feedback_tokens=3)
    assert s.response_ids == [10, 20, 21, 22, EOS]
    assert s.feedback_truncated is False


def test_splice_without_eos() -> None:
    s = splice([10, 11, EOS], [20, 21], EOS, append_eos=False)
    assert s.response_ids == [10, 11, 20, 21]
    assert s.teacher_mask == [0, 0, 1, 1]
    assert (s.student_len, s.teacher_len) == (2, 2)


def test_splice_empty_student() -> None:
    s = splice([], [20], EOS)
    assert s.response_ids == [20, EOS]
    assert s.teacher_mask == [1, 1]


def test_splice_round_trip_with_the_student_tokenizer(smol_tokenizer) -> None:
    tok = smol_tokenizer
    eos = 2  # <|im_end|>
    student_text = "I think 3*4=12, so the answer is \\boxed{12}."
    teacher_text = "\n\nWait, I misread 5 as 4.\n\nSo 3*5=15, \\boxed{15}"
    student_ids = tok(student_text, add_special_tokens=False)["input_ids"] + [eos]
    teacher_ids = tok(teacher_text, add_special_tokens=False)["input_ids"]
    s = splice(student_ids, teacher_ids, eos)

    assert s.response_ids[: s.student_len] == student_ids[:-1]
    assert s.response_ids[s.student_len : -1] == teacher_ids
    assert s.response_ids[-1] == eos
    assert tok.decode(s.response_ids, skip_special_tokens=True) == student_text + teacher_text
    masked = [t for t, m in zip(s.response_ids, s.teacher_mask, strict=True) if m]
    assert tok.decode(masked, skip_special_tokens=True) == teacher_text
    unmasked = [t for t, m in zip(s.response_ids, s.teacher_mask, strict=True) if not m]
    assert tok.decode(unmasked) == student_text


# ------------------------------------------------------------------------------------------------ mask


def test_shaped_mask_rollout_scope_covers_everything() -> None:
    assert shaped_mask([0, 0, 1, 1], guided=True, scope="rollout") == [1, 1, 1, 1]


def test_shaped_mask_teacher_scope_is_the_teacher_mask() -> None:
    tm = [0, 0, 1, 1]
    out = shaped_mask(tm, guided=True, scope="teacher")
    assert out == [0, 0, 1, 1]
    out[0] = 1
    assert tm == [0, 0, 1, 1]  # a copy, not the caller's list


@pytest.mark.parametrize("scope", ["rollout", "teacher"])
def test_shaped_mask_unguided_is_all_zero(scope: str) -> None:
    assert shaped_mask([0, 0, 0], guided=False, scope=scope) == [0, 0, 0]


def test_shaped_mask_bad_scope_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown guidance\.mask_scope 'all'"):
        shaped_mask([0, 1], guided=True, scope="all")


def test_targets_pick_groups_by_their_own_rewards() -> None:
    from thinktuning.guidance.rules import targeted

    assert targeted([0.0, 1.0], "uniform")
    assert targeted([0.0, 0.0], "zero_signal") and targeted([1.0, 1.0], "zero_signal")
    assert not targeted([0.0, 1.0], "zero_signal")
    assert targeted([0.0, 0.0], "failing") and not targeted([1.0, 1.0], "failing")
    with pytest.raises(ValueError, match=r"unknown guidance\.target"):
        targeted([0.0], "hardest")


def test_select_guided_with_a_target_skips_groups_that_have_signal() -> None:
    # groups of 2: [wrong, wrong] (no signal, failing), [right, wrong] (signal), [right, right] (no signal)
    finished = [True] * 6
    own = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    rng = random.Random(0)
    zero = select_guided(finished, 2, 0.5, rng, 1, own, "zero_signal")
    assert [i // 2 for i in zero] == [0, 2]
    failing = select_guided(finished, 2, 0.5, random.Random(0), 1, own, "failing")
    assert [i // 2 for i in failing] == [0]
    assert select_guided(finished, 2, 0.5, random.Random(0)) == select_guided(finished, 2, 0.5, random.Random(0),
                                                                            1, own, "uniform")
    with pytest.raises(ValueError, match="needs each rollout's own reward"):
        select_guided(finished, 2, 0.5, random.Random(0), 1, None, "failing")
