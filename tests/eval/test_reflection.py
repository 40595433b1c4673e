"""Tests for the reflective-behaviour detector (thinktuning.eval.reflection)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktuning.eval.reflection import (
    BEHAVIOURS,
    EXAMPLES,
    PATTERNS,
    detect,
    own_sample,
    rates_by_step,
    recomputes,
    reflection_rates,
    rollout_rates,
)

PROMPT_SUFFIX = "Let's think step by step and provide your final answer inside \\boxed{} notation."


def _none(**hits: bool) -> dict[str, bool]:
    out = dict.fromkeys(BEHAVIOURS, False)
    out.update({k.replace("_", "-"): v for k, v in hits.items()})
    return out


# --------------------------------------------------------------------------- structure


def test_tables_cover_every_behaviour():
    assert set(PATTERNS) == set(BEHAVIOURS) == set(EXAMPLES)
    for name in BEHAVIOURS:
        assert PATTERNS[name], name
        assert len(EXAMPLES[name]["match"]) >= 4, name
        assert len(EXAMPLES[name]["no_match"]) >= 4, name


@pytest.mark.parametrize("pattern", [p for pats in PATTERNS.values() for p in pats], ids=lambda p: p.pattern[:40])
def test_patterns_are_case_insensitive_and_have_no_nested_quantifiers(pattern):
    assert pattern.flags & re.IGNORECASE
    # a quantifier applied to a group ("(...)+", "(...)*", "(...){n,m}") is the shape that can backtrack badly;
    # optional groups "(...)?" are fine
    assert not re.search(r"\)[+*{]", pattern.pattern), pattern.pattern


_CASES = [(name, kind, text) for name in BEHAVIOURS for kind in ("match", "no_match") for text in EXAMPLES[name][kind]]


@pytest.mark.parametrize(("name", "kind", "text"), _CASES, ids=[f"{n}-{k}-{i}" for i, (n, k, _) in enumerate(_CASES)])
def test_examples(name, kind, text):
    assert detect(text)[name] is (kind == "match"), (name, kind, text)


# --------------------------------------------------------------------------- false positives


@pytest.mark.parametrize(
    "text",
    [
        PROMPT_SUFFIX,
        "provide your final answer inside \\boxed{}",
        "The waiter awaited the order.",
        "He balanced his checkbook after cashing his paycheck.",
        "There were no apples. She had no money, so no purchase happened.",
        "12 + 5 = 17. Then 17 * 2 = 34. The answer is \\boxed{34}.",
        "",
    ],
)
def test_neutral_text_triggers_nothing(text):
    assert detect(text) == _none()


def test_wait_and_no_only_as_reflective_cues():
    assert not detect("The waiter awaited the guests; they had to wait 5 minutes.")["backtracking"]
    assert detect("They had to wait 5 minutes. Wait, that was 10 minutes.")["backtracking"]
    assert detect("Hmm, wait. I think that's off.")["backtracking"]
    assert not detect("There is no way to split 7 apples evenly; no, is not the word.")["backtracking"]
    assert detect("No, that can't be right.")["backtracking"]
    assert detect("The total is 20.\nNo, it is 25.")["backtracking"]


def test_curly_apostrophes_match():
    assert detect("Let’s double-check the sum.")["verification"]
    assert detect("That’s not what it said.")["self-conflict"]


# --------------------------------------------------------------------------- recomputation


def test_recomputes():
    assert recomputes("3 * 4 = 13, so 13 apples. Wait, let me redo: 3 * 4 = 12.")
    assert recomputes("First 12 + 5 = 17. Let me verify: 5 + 12 = 17.")  # + up to operand order
    assert recomputes("2 \\times 6 = 12 ... let me double-check: 2 × 6 = 12")  # operator spellings
    assert not recomputes("12 + 5 = 17")  # once
    assert not recomputes("12 + 5 = 17 and again 12 + 5 = 17.")  # repeated, no cue in between
    assert not recomputes("Let me check. 12 + 5 = 17 and 12 + 5 = 17.")  # cue before both, not between
    assert not recomputes("12 - 5 = 7. Wait, 5 - 12 = -7.")  # - is not commutative
    assert not recomputes("112 + 5 = 117. Let me check: 12 + 5 = 17.")  # different operand


def test_recompute_alone_counts_as_backtracking():
    text = "The cost is 3 * 4 = 12. Let me verify that: 3 * 4 = 12. Good."
    found = detect(text)
    assert found["backtracking"] and found["verification"]
    assert not detect("The cost is 3 * 4 = 12. Then 3 * 4 = 12 again for the second box.")["backtracking"]


# --------------------------------------------------------------------------- whole responses


RESPONSES = [
    (
        "Tom has 3 boxes of 4 pens, so 3 * 4 = 12 pens. He buys 5 more: 12 + 5 = 17. "
        "Wait, the problem says he buys 5 more *boxes*, not pens. Let me redo this: 8 * 4 = 32 pens. "
        "The answer is \\boxed{32}.",
        _none(self_conflict=True, backtracking=True),
    ),
    (
        "Each ticket costs $8 and she buys 6, so 8 * 6 = 48. Let me double-check each step: "
        "6 tickets at $8 is 48 dollars. Yes, that's correct. The answer is \\boxed{48}.",
        _none(self_agreement=True, verification=True),  # "8 * 6 = 48" is written once: no recomputation
    ),
    (
        "The speed is 60 / 4 = 15 mph. Are you sure about that number? The distance was 80 miles, not 60. "
        "So 80 / 4 = 20 mph. The answer is \\boxed{20}.",
        _none(self_consultation=True),
    ),
    (
        "She saves 5 dollars a week for 10 weeks: 5 * 10 = 50. The answer is right, but I rushed it. "
        "Let me verify it more carefully: 10 weeks times 5 dollars is 50 dollars. \\boxed{50}",
        _none(self_critique=True, verification=True),
    ),
    (
        "There are 24 students and 1/3 are boys, so 24 / 3 = 8 boys and 24 - 8 = 16 girls. \\boxed{16}",
        _none(),
    ),
]


@pytest.mark.parametrize(("text", "expected"), RESPONSES, ids=[f"response-{i}" for i in range(len(RESPONSES))])
def test_whole_responses(text, expected):
    assert detect(text) == expected


# --------------------------------------------------------------------------- rates


def test_reflection_rates_by_hand():
    texts = [
        "Let me check: 2 + 2 = 4.",  # verification
        "Wait, actually it is 5.",  # backtracking
        "Let me verify the sum. Wait, I made a mistake.",  # verification, backtracking
        "The answer is 4.",  # nothing
    ]
    rates = reflection_rates(texts)
    assert set(rates) == {*BEHAVIOURS, "any"}
    assert rates["verification"] == 0.5
    assert rates["backtracking"] == 0.5
    assert rates["any"] == 0.75
    for name in ("self-conflict", "self-agreement", "self-consultation", "self-critique"):
        assert rates[name] == 0.0


def test_reflection_rates_empty_and_generator():
    assert reflection_rates([]) == dict.fromkeys((*BEHAVIOURS, "any"), 0.0)
    assert reflection_rates(t for t in ["Wait, no."])["backtracking"] == 1.0


STUDENT_G = "The total is 3 * 4 = 12. "
TEACHER_G = "Wait, the problem says 5 boxes. Let me redo: 5 * 4 = 20."


def _write_rollouts(path):
    rows = [
        # step 0: unguided, reflects (verification)
        {"step": 0, "guided": False, "response": "Let me check: 2 + 2 = 4.", "teacher_span": None},
        # step 0: unguided, no reflection
        {"step": 0, "guided": False, "response": "The answer is 4.", "teacher_span": None},
        # step 0: guided; the reflective words are the teacher's only
        {
            "step": 0,
            "guided": True,
            "response": STUDENT_G + TEACHER_G,
            "teacher_span": [len(STUDENT_G), len(STUDENT_G + TEACHER_G)],
        },
        # step 1: unguided, reflects (backtracking)
        {"step": 1, "guided": False, "response": "Actually, it is 5.", "teacher_span": None},
        # step 1: guided but no span recorded (a refinement written with the critique in context): not unaided
        {"step": 1, "guided": True, "response": "Are you sure? Yes.", "teacher_span": None},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "")  # blank lines are ignored
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_own_sample():
    assert own_sample({"guided": False, "response": "x = 2", "finished": True}) == ("x = 2", True)
    assert own_sample({"response": "x = 2"}) == ("x = 2", False)  # unfinished: ran into the length limit
    spliced = {"guided": True, "response": "ab" + "TEACHER", "teacher_span": [2, 9], "finished": True}
    assert own_sample(spliced) == ("ab", True)  # only finished samples are spliced
    assert own_sample({"guided": True, "no_feedback": True, "response": "ab", "finished": False}) == ("ab", False)
    assert own_sample({"guided": True, "response": "hint, then mine", "teacher_span": [0, 5]}) is None
    assert own_sample({"guided": True, "response": "refined", "teacher_span": None}) is None


def test_rollout_rates_guided_filter(tmp_path):
    path = _write_rollouts(tmp_path / "rollouts.jsonl")
    every = rollout_rates(str(path))  # default guided=None: the student's 4 own samples (rows 1-4)
    assert every["verification"] == pytest.approx(1 / 4)
    assert every["backtracking"] == pytest.approx(1 / 4)
    assert every["any"] == pytest.approx(2 / 4)

    unguided = rollout_rates(path, guided=False)  # 3 unguided rollouts
    assert unguided["verification"] == pytest.approx(1 / 3)
    assert unguided["backtracking"] == pytest.approx(1 / 3)
    assert unguided["any"] == pytest.approx(2 / 3)

    guided = rollout_rates(path, guided=True)  # only the spliced row has a sample of its own, and it is plain
    assert guided == dict.fromkeys((*BEHAVIOURS, "any"), 0.0)


def test_rollout_rates_teacher_span_slicing(tmp_path):
    path = _write_rollouts(tmp_path / "rollouts.jsonl")
    teacher = rollout_rates(path, guided=True, field="teacher")  # only the rollout with a span
    assert teacher["self-conflict"] == 1.0
    assert teacher["backtracking"] == 1.0
    assert teacher["self-consultation"] == 0.0
    assert rollout_rates(path, guided=False, field="teacher") == dict.fromkeys((*BEHAVIOURS, "any"), 0.0)


def test_rollout_rates_other_field_and_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps({"guided": True, "response": "x", "teacher_raw": "Let me verify."})
        + "\n"
        + json.dumps({"guided": True, "response": "y"})
        + "\n",
        encoding="utf-8",
    )
    assert rollout_rates(path, guided=True, field="teacher_raw")["verification"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"guided": false, "response": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        rollout_rates(bad)


def test_rates_by_step(tmp_path):
    path = _write_rollouts(tmp_path / "rollouts.jsonl")
    by_step = rates_by_step(path)
    assert list(by_step) == [0, 1]
    assert by_step[0]["verification"] == pytest.approx(1 / 3)
    assert by_step[0]["any"] == pytest.approx(1 / 3)
    assert by_step[1]["backtracking"] == 1.0
    assert by_step[1]["any"] == 1.0
    guided = rates_by_step(path, guided=True)
    assert guided == {0: dict.fromkeys((*BEHAVIOURS, "any"), 0.0)}  # step 1's guided row has no own sample
    assert rates_by_step(path, guided=True, field="teacher") == {0: rollout_rates(path, guided=True, field="teacher")}


# --------------------------------------------------------------------------- robustness


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_detect_never_raises(text):
    found = detect(text)
    assert set(found) == set(BEHAVIOURS)
    assert all(isinstance(v, bool) for v in found.values())


_ALPHABET = st.sampled_from(
    ["wait", "Wait,", " ", "  ", ".", "?", "\n", "let me", "check", "3 * 4 = 12", "the problem says", "No,",
     "did I", "more", "careful", "verify", "back in", "12", "+", "=", "a", "b", "x", "'", "\\times"]
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, min_size=1, max_size=40))
def test_detect_fast_on_50k_chars(pieces):
    chunk = "".join(pieces)
    text = (chunk * (50_000 // max(len(chunk), 1) + 1))[:50_000]
    start = time.perf_counter()
    detect(text)
    assert time.perf_counter() - start < 2.0  # linear: a quadratic scan of 50k chars takes tens of seconds


@pytest.mark.parametrize(
    "text",
    [
        "a" * 50_000,
        " " * 50_000,
        "let me " * 7_143,
        ("3 * 4 = 12 " * 4_546)[:50_000],
        ("Wait, " * 8_334)[:50_000],
        ("did I " * 8_334)[:50_000],
    ],
    ids=["letters", "spaces", "let-me", "arith", "wait", "did-i"],
)
def test_detect_fast_on_adversarial_50k(text):
    start = time.perf_counter()
    detect(text)
    assert time.perf_counter() - start < 2.0  # see above
