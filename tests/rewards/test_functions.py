"""Tests for answer extraction, the never-hanging checker, and reward-function plumbing.

The checker tests share one worker process (module fixture) because each start costs ~0.5 s.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
from transformers import TrainerState

from thinktuning.rewards.answers import extract_answer, extract_boxed, extract_last_number, is_unevaluated
from thinktuning.rewards.checker import AnswerChecker
from thinktuning.rewards.functions import (
    call_reward_functions,
    compute_rewards,
    correctness_reward,
    load_reward_function,
)

# A power tower sympy tries to evaluate exactly: it runs for minutes with little memory.
SLOW_ANSWER = "9^{9^{9^{9}}}"


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(timeout_s=5.0) as c:
        yield c


# --- extraction --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),  # last wins
        ("\\boxed{\\boxed{5}}", "5"),  # nested box unwrapped
        ("\\boxed{\\sqrt{2}+\\frac{a}{b^{2}}}", "\\sqrt{2}+\\frac{a}{b^{2}}"),  # nested braces
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("\\boxed{ 9 }", "9"),
        ("answer \\boxed{6}; format: inside \\boxed{} notation", "6"),  # an empty box is ignored
        ("no box here, 12", None),
        ("\\boxed{12", None),  # unbalanced: cut off
        ("\\boxed{3} and then \\boxed{4", None),  # the last box is unbalanced: no earlier box promoted
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 1,234 apples.", "1234"),
        ("Total: 41.", "41"),
        ("x = -5", "-5"),
        ("10-5 is the sum", "5"),  # a binary minus is not a sign
        ("pi is 3.14 and e is 2.72.", "2.72"),
        ("$1,000,000 in cash", "1000000"),
        ("1,2,3", "3"),
        ("no digits", None),
        ("-0.5", "-0.5"),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_extract_answer_fallback():
    assert extract_answer("so 12 apples") is None
    assert extract_answer("so 12 apples", fallback="last_number") == "12"
    assert extract_answer("\\boxed{7} from 12 apples", fallback="last_number") == "7"  # boxed first
    with pytest.raises(ValueError, match="last_number"):
        extract_answer("x", fallback="first_number")


# --- checker -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("1,000", "1000", True),
        ("42.0", "42", True),
        ("42", "42", True),
        ("\\frac{14}{3}", "14/3", True),
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\text{Evelyn}", "\\text{Evelyn}", True),
        ("$10", "10", True),
        ("41", "42", False),
        ("-3", "3", False),
        ("\\frac{1}{3}", "0.5", False),
        (None, "42", False),
        ("", "42", False),
        # arithmetic left undone is not an answer, though math-verify evaluates it (RESULTS.md point 10)
        ("25 + 41", "66", False),
        ("8 \\times 7", "56", False),
        ("(3 + 4) * 2", "14", False),
        ("3/4", "0.75", True),
        ("8 + 7 = 15", "15", True),
    ],
)
def test_checker_equivalences(checker, pred, ref, expected):
    assert checker.check(pred, ref) is expected


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("25 + 41", "66", True),
        ("25+41", "\\boxed{66}", True),
        ("1,000 + 5", "1,005", True),
        ("10 - 5", "5", True),
        ("2 x 3", "6", True),
        ("8 \\div 2", "4", True),
        ("66", "66", False),
        ("-5", "-5", False),
        ("1,000", "1000", False),
        ("3/4", "0.75", False),  # a fraction is a final form
        ("3 + 2\\sqrt{2}", "5", False),  # not plain arithmetic
        ("8 + 7 = 15", "15", False),  # the computation with its result
        ("25 + 41", "x + 1", False),  # only a numeric reference makes the question decidable
    ],
)
def test_is_unevaluated(pred, ref, expected):
    assert is_unevaluated(pred, ref) is expected


def test_check_many_matches_check(checker):
    preds = ["0.5", "7", None, "1,000", "7"]
    refs = ["\\frac{1}{2}", "8", "1", "1000", "8"]
    assert checker.check_many(preds, refs) == [True, False, False, True, False]
    with pytest.raises(ValueError):
        checker.check_many(["1"], [])


def test_timeout_returns_false_counts_and_recovers():
    with AnswerChecker(timeout_s=1.0) as c:
        assert c.check("3", "3.0")  # worker started, so the timing below excludes start-up
        start = time.monotonic()
        assert c.check_many([SLOW_ANSWER, "0.25"], ["1", "\\frac{1}{4}"]) == [False, True]
        elapsed = time.monotonic() - start
        assert c.timeouts == 1
        assert elapsed < 1.0 + 4.0  # timeout + restart, never the minutes sympy would take
        assert c.check("2", "2.0")  # still usable after the kill


def test_checker_survives_a_dead_worker(checker):
    assert checker.check("\\frac{3}{6}", "0.5")
    checker._holder["worker"].proc.kill()
    checker._holder["worker"].proc.wait()
    assert checker.check("\\frac{4}{8}", "0.5")


def test_checker_works_off_the_main_thread(checker):
    out = []
    thread = threading.Thread(target=lambda: out.append(checker.check_many(["0.75", "2"], ["3/4", "3"])))
    thread.start()
    thread.join(timeout=30)
    assert out == [[True, False]]


# --- correctness_reward ------------------------------------------------------------------------------------


def test_correctness_reward(checker):
    completions = [
        "27 + 14 = 41, so \\boxed{41}.",
        "The answer is \\boxed{40}.",
        "I think it is 41.",
        "\\boxed{41}",
        [{"role": "assistant", "content": "\\boxed{41.0}"}],  # TRL conversational format
    ]
    truncated = [False, False, False, True, False]
    refs = ["41"] * 5
    rewards = correctness_reward([None] * 5, completions, refs, truncated, checker=checker, level=[1] * 5)
    assert rewards == [1.0, 0.0, 0.0, 0.0, 1.0]  # unboxed -> 0 by default; truncated -> 0
    lenient = correctness_reward(
        [None] * 5,
        completions,
        refs,
        truncated,
        answer_fallback="last_number",
        zero_if_truncated=False,
        checker=checker,
    )
    assert lenient == [1.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="references"):
        correctness_reward([None], ["\\boxed{1}"], ["1", "2"], checker=checker)


# --- loading and combining reward functions ---------------------------------------------------------------


def length_penalty(prompts, completions, **kwargs):
    return [-0.1 * len(c) for c in completions]


def only_long(prompts, completions, **kwargs):
    return [1.0 if len(c) > 3 else None for c in completions]


def needs_level(prompts, completions, level, **kwargs):
    return [float(lv) for lv in level]


def broken(prompts, completions, **kwargs):
    raise KeyError("oops")


def too_short(prompts, completions, **kwargs):
    return [1.0]


NOT_CALLABLE = 3


def test_load_reward_function_by_import_path():
    assert load_reward_function(f"{__name__}:length_penalty") is length_penalty
    assert load_reward_function(f"{__name__}.only_long") is only_long
    loaded = load_reward_function(f"{__file__}:needs_level")  # a file path also works
    assert loaded([], ["a"], level=[2]) == [2.0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        (f"{__name__}:missing", "has no attribute 'missing'"),
        (f"{__name__}:NOT_CALLABLE", "not a callable"),
        ("justaname", "must look like"),
        ("/no/such/file.py:f", "does not exist"),
    ],
)
def test_load_reward_function_errors(path, message):
    with pytest.raises(ValueError, match=message):
        load_reward_function(path)


def test_compute_rewards_weights_and_none():
    completions = ["ab", "abcd"]
    columns = {"level": [1, 3]}
    table = call_reward_functions([only_long, needs_level], [None, None], completions, columns)
    assert table == [[None, 1.0], [1.0, 3.0]]
    totals = compute_rewards([only_long, needs_level], [None, None], completions, columns, weights=[2.0, 0.5])
    assert totals == pytest.approx([0.5, 3.5])
    assert compute_rewards([only_long], [None, None], completions, columns) == [0.0, 1.0]


def test_trainer_state_reaches_reward_functions_only_when_given():
    seen = []

    def progress(prompts, completions, **kw):
        seen.append(sorted(kw))
        state = kw.get("trainer_state")
        return [0.0 if state is None else state.global_step / state.max_steps for _ in completions]

    state = TrainerState(global_step=3, max_steps=12)
    assert compute_rewards([progress], [None, None], ["a", "b"], {"level": [1, 2]}, trainer_state=state) == [0.25] * 2
    assert compute_rewards([progress], [None], ["a"], {"level": [1]}) == [0.0]
    assert seen == [["level", "trainer_state"], ["level"]]


def test_compute_rewards_errors():
    with pytest.raises(RuntimeError, match="reward function broken raised KeyError"):
        compute_rewards([functools.partial(broken)], [None], ["x"], {})
    with pytest.raises(RuntimeError, match=r"too_short.*1 values for 2"):
        compute_rewards([too_short], [None, None], ["x", "y"], {})
    with pytest.raises(ValueError, match="weights"):
        compute_rewards([only_long], [None], ["x"], {}, weights=[1.0, 2.0])
