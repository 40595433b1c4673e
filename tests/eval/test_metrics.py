"""Eval metrics against hand-computed values (and pass@k against the binomial formula itself)."""

from __future__ import annotations

import math

import pytest

from thinktuning.eval.metrics import avg_at_k, k_values, maj_at_k, mean, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 is the fraction correct
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 3, 2, 1.0),  # only one wrong sample: every pair holds a correct one
        (4, 0, 4, 0.0),
        (1, 1, 1, 1.0),
        (10, 3, 10, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_binomial_formula_and_is_monotone():
    for n in range(1, 13):
        for c in range(n + 1):
            values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            for k, v in enumerate(values, start=1):
                assert v == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
            assert values == sorted(values)
    assert 0 < pass_at_k(1000, 1, 500) < 1  # a running product, no overflowing binomials


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([False]) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])


def test_maj_at_k_majority_answer_decides():
    # "5" is the majority and wrong, even though one sample ("7") was right
    assert maj_at_k(["5", "7", "5", None], [False, True, False, False]) is False
    assert maj_at_k(["7", "5", "7", None], [True, False, True, False]) is True


def test_maj_at_k_ties_go_to_the_first_answer_seen():
    assert maj_at_k(["7", "5", "5", "7"], [True, False, False, True]) is True
    assert maj_at_k(["5", "7", "7", "5"], [False, True, True, False]) is False


def test_maj_at_k_first_k_only_and_whitespace_grouping():
    # over the first 2 samples "3" and "4" tie, "3" (first) wins; over all 4, "4" wins
    answers, verdicts = ["3", "4", "4", "4"], [False, True, True, True]
    assert maj_at_k(answers, verdicts, k=2) is False
    assert maj_at_k(answers, verdicts) is True
    assert maj_at_k(["1 / 2", "9", "1/2"], [True, False, True]) is True


def test_maj_at_k_without_answers_is_wrong_and_checks_arguments():
    assert maj_at_k([None, "  "], [False, False]) is False
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False])
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True], k=2)


def test_k_values_and_mean():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(6) == [1, 2, 4, 6]
    assert mean([0.5, 1.0, 0.0]) == 0.5
    assert mean([]) == 0.0


def test_repeats_finds_an_answer_loop_and_not_a_short_echo():
    from thinktuning.eval.metrics import repeats

    loop = "3 + 4 = 7. " + "The final answer is \\boxed{7}. " * 3
    assert repeats(loop)
    assert not repeats("The final answer is \\boxed{7}. The final answer is \\boxed{7}.")  # twice is not a loop
    assert not repeats("7. 7. 7. 7.")  # too short to be a sentence


def test_answer_change_compares_the_last_answer_with_the_first():
    from thinktuning.eval.metrics import answer_change
    from thinktuning.rewards.answers import boxed_answers

    text = "53 + 43 = 92, so \\boxed{92}. Let me check my work: 53 + 43 = 96. The answer is \\boxed{96}."
    assert boxed_answers(text) == ["92", "96"]
    assert answer_change(boxed_answers(text), "96") == "wrong->right"
    assert answer_change(["96", "92"], "96") == "right->wrong"
    assert answer_change(["90", "92"], "96") == "wrong->wrong"
    assert answer_change(["1,000", "1000"], "1000") == "kept"
    assert answer_change([], "1") is None
    assert boxed_answers("\\boxed{} then \\boxed{\\boxed{5}} and \\boxed{6") == ["5"]  # empty and unclosed skipped
