"""Tests for the teacher prompt: parsing teacher output, the demonstrations, and message structure.

The parser decides whether a guided rollout exists at all, so it is tested on the failure modes a small
teacher actually produces (truncation, missing parts, bad \\boxed{}), and fuzzed for never raising.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktuning.teacher.prompt import (
    DEMONSTRATIONS,
    OPINIONS,
    SYSTEM_PROMPT,
    TAGS,
    Demonstration,
    Feedback,
    build_messages,
    feedback_text,
    parse_feedback,
    render_feedback,
    user_message,
)

GOOD = (
    "<opinion>incorrect</opinion>\n"
    "<reason>Wait, I added instead of subtracting.</reason>\n"
    "<phrase>So 10 - 3 = 7. The answer is \\boxed{7}.</phrase>"
)
GOOD_FB = Feedback(
    "incorrect", "Wait, I added instead of subtracting.", "So 10 - 3 = 7. The answer is \\boxed{7}."
)

TAG_RE = re.compile(r"</?(opinion|reason|phrase)>", re.IGNORECASE)


def _triple(opinion: str = "correct", reason: str = "I checked it.", phrase: str = "So \\boxed{3}.") -> str:
    return f"<opinion>{opinion}</opinion><reason>{reason}</reason><phrase>{phrase}</phrase>"


def _last_boxed(text: str) -> str:
    start = text.rfind("\\boxed{") + len("\\boxed{")
    return text[start : text.index("}", start)]


# ---------------------------------------------------------------- parse_feedback


def test_parses_good_output():
    assert parse_feedback(GOOD) == GOOD_FB


def test_ignores_text_before_and_after():
    text = "Sure, here is my feedback:\n\n" + GOOD + "\n\nI hope this helps.<|im_end|>"
    assert parse_feedback(text) == GOOD_FB


def test_whitespace_and_newlines_inside_and_between_tags():
    text = (
        "<opinion>\n  incorrect \n</opinion>\n\n"
        "<reason>\n  Wait, I added instead of subtracting.\n</reason>   \n"
        "<phrase>\n\tSo 10 - 3 = 7. The answer is \\boxed{7}.\n\n</phrase>"
    )
    assert parse_feedback(text) == GOOD_FB


@pytest.mark.parametrize("raw", ["CORRECT", "Correct", " correct. ", "Correct.", "cOrReCt"])
def test_opinion_case_and_full_stop_are_normalised(raw):
    fb = parse_feedback(_triple(opinion=raw))
    assert fb is not None and fb.opinion == "correct"


@pytest.mark.parametrize("raw", ["", "mostly correct", "yes", "correct!", "in correct", "correct incorrect"])
def test_other_opinions_are_rejected(raw):
    assert parse_feedback(_triple(opinion=raw)) is None


def test_tag_names_are_case_insensitive():
    text = "<Opinion>correct</Opinion><REASON>I checked it.</REASON><Phrase>So \\boxed{3}.</Phrase>"
    assert parse_feedback(text) == Feedback("correct", "I checked it.", "So \\boxed{3}.")


def test_missing_phrase():
    assert parse_feedback("<opinion>correct</opinion><reason>I checked it.</reason>") is None


def test_truncated_phrase():
    assert parse_feedback("<opinion>correct</opinion><reason>Fine.</reason><phrase>So \\boxed{3}.") is None


def test_missing_opinion_or_wrong_order():
    assert parse_feedback("<reason>I checked it.</reason><phrase>So \\boxed{3}.</phrase>") is None
    swapped = "<opinion>correct</opinion><phrase>So \\boxed{3}.</phrase><reason>I checked it.</reason>"
    assert parse_feedback(swapped) is None


@pytest.mark.parametrize(
    "phrase",
    ["So the answer is 3.", "So \\boxed{}.", "So \\boxed{  }.", "So \\box{3}.", "So boxed{3}."],
)
def test_phrase_without_usable_boxed(phrase):
    assert parse_feedback(_triple(phrase=phrase)) is None


@pytest.mark.parametrize("phrase", ["So \\boxed{3.", "So \\boxed{\\frac{1}{2}.", "So \\boxed{{3}."])
def test_unbalanced_boxed(phrase):
    assert parse_feedback(_triple(phrase=phrase)) is None


def test_nested_braces_in_boxed_are_fine():
    fb = parse_feedback(_triple(phrase="So \\boxed{\\frac{1}{2}}."))
    assert fb is not None and fb.phrase == "So \\boxed{\\frac{1}{2}}."


def test_only_last_boxed_must_be_balanced():
    # The reward reads the last \boxed{}; an earlier broken one does not matter.
    assert parse_feedback(_triple(phrase="Not \\boxed{2. So \\boxed{3}.")) is not None
    assert parse_feedback(_triple(phrase="So \\boxed{3}. Not \\boxed{2.")) is None


@pytest.mark.parametrize("reason", ["", "   ", "\n\t\n"])
def test_empty_reason(reason):
    assert parse_feedback(_triple(reason=reason)) is None


def test_stray_text_between_parts_is_rejected():
    text = "<opinion>correct</opinion>\nReason: <reason>I checked it.</reason><phrase>So \\boxed{3}.</phrase>"
    assert parse_feedback(text) is None


def test_nested_tags_disqualify_a_triple():
    assert parse_feedback(_triple(reason="I <reason>checked</reason> it.")) is None
    assert parse_feedback(_triple(phrase="So <opinion>correct</opinion> \\boxed{3}.")) is None
    assert parse_feedback(_triple(reason="I checked </phrase> it.")) is None


def test_last_complete_triple_wins():
    first = _triple("incorrect", "First thought.", "So \\boxed{1}.")
    second = _triple("correct", "Second thought.", "So \\boxed{2}.")
    assert parse_feedback(first + "\n" + second) == Feedback("correct", "Second thought.", "So \\boxed{2}.")
    # A broken restatement after a good triple leaves the good one in force.
    assert parse_feedback(first + "\n<opinion>correct</opinion><reason>Hm") == Feedback(
        "incorrect", "First thought.", "So \\boxed{1}."
    )


def test_duplicated_opinion_tag_uses_the_one_next_to_the_reason():
    text = "<opinion>correct</opinion>" + _triple("incorrect")
    fb = parse_feedback(text)
    assert fb is not None and fb.opinion == "incorrect"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "garbage",
        "<opinion>",
        "</phrase></reason></opinion>",
        "<<<>>>",
        "\\boxed{",
        "}" * 50,
        "\x00\ud800",
    ],
)
def test_garbage_gives_none(text):
    assert parse_feedback(text) is None


def test_non_string_gives_none():
    assert parse_feedback(None) is None  # type: ignore[arg-type]
    assert parse_feedback(b"<opinion>correct</opinion>") is None  # type: ignore[arg-type]


def _assert_valid(fb: Feedback | None) -> None:
    if fb is None:
        return
    assert fb.opinion in OPINIONS
    assert fb.reason and fb.reason == fb.reason.strip()
    assert fb.phrase and fb.phrase == fb.phrase.strip()
    assert "\\boxed{" in fb.phrase
    assert not TAG_RE.search(fb.reason) and not TAG_RE.search(fb.phrase)


@given(st.text())
def test_any_text_never_raises(text):
    _assert_valid(parse_feedback(text))


_PIECES = [
    "<opinion>", "</opinion>", "<reason>", "</reason>", "<phrase>", "</phrase>",
    "correct", "incorrect", "\\boxed{", "{", "}", " ", "\n", "x", "7", "<", ">", "/",
]  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_PIECES), max_size=200))
def test_tag_soup_never_raises(pieces):
    _assert_valid(parse_feedback("".join(pieces)))


def test_long_adversarial_inputs_are_fast():
    cases = [
        "<opinion>correct</opinion><reason>x</reason><phrase>\\boxed{" * 20_000,
        "<opinion>" * 50_000 + "</opinion>" * 50_000,
        "\\boxed{" * 100_000,
        "<opinion>correct</opinion><reason>" + "x" * 500_000,
        "{" * 300_000 + "<phrase>",
    ]
    for text in cases:
        start = time.perf_counter()
        parse_feedback(text)
        assert time.perf_counter() - start < 2.0


_field = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: not TAG_RE.search(s) and "<" not in s
)


@given(
    st.sampled_from(OPINIONS),
    _field.filter(lambda s: s.strip() != ""),
    _field,
    st.text(st.characters(blacklist_characters="{}<>", blacklist_categories=("Cs",)), max_size=20).filter(
        lambda s: s.strip() != ""
    ),
)
def test_render_then_parse_round_trips(opinion, reason, prefix, answer):
    phrase = f"{prefix} The answer is \\boxed{{{answer}}}."
    text = render_feedback(opinion, reason, phrase)
    assert parse_feedback(text) == Feedback(opinion, reason.strip(), phrase.strip())


# ---------------------------------------------------------------- render_feedback / feedback_text


def test_render_exact_format():
    assert render_feedback(GOOD_FB.opinion, GOOD_FB.reason, GOOD_FB.phrase) == GOOD


@pytest.mark.parametrize(
    ("opinion", "reason", "phrase"),
    [
        ("Correct", "Fine.", "\\boxed{1}"),
        ("maybe", "Fine.", "\\boxed{1}"),
        ("correct", " ", "\\boxed{1}"),
        ("correct", "Fine.", "no box"),
        ("correct", "Fine </reason>", "\\boxed{1}"),
        ("correct", "Fine.", "\\boxed{1"),
    ],
)
def test_render_rejects_what_would_not_parse(opinion, reason, phrase):
    with pytest.raises(ValueError):
        render_feedback(opinion, reason, phrase)


def test_feedback_text_splices():
    assert feedback_text(GOOD_FB) == "\n\n" + GOOD_FB.reason + "\n\n" + GOOD_FB.phrase
    assert feedback_text(GOOD_FB, "teacher") == feedback_text(GOOD_FB)
    assert feedback_text(GOOD_FB, "student") == "\n\n" + GOOD_FB.reason + "\n\n"
    with pytest.raises(ValueError):
        feedback_text(GOOD_FB, "both")


# ---------------------------------------------------------------- demonstrations


def test_four_behaviours_in_order_with_right_opinions():
    assert [(d.behaviour, d.opinion) for d in DEMONSTRATIONS] == [
        ("self-conflict", "incorrect"),
        ("self-agreement", "correct"),
        ("self-consultation", "incorrect"),
        ("self-critique", "correct"),
    ]
    assert all(isinstance(d, Demonstration) for d in DEMONSTRATIONS)


@pytest.mark.parametrize("demo", DEMONSTRATIONS, ids=lambda d: d.behaviour)
def test_each_demonstration_parses_back_to_itself(demo):
    text = render_feedback(demo.opinion, demo.reason, demo.phrase)
    assert parse_feedback(text) == Feedback(demo.opinion, demo.reason, demo.phrase)


# Hand-computed answers: 24 - 3*5 - 4 = 5; 3*12 - 10 = 26; 50 - 6*7 = 8; 4*9*3 = 108.
# The student's answers: the two incorrect demos carry one slip each (4 per box -> 8; 6*7=48 -> 2).
EXPECTED = {
    "self-conflict": ("5", "8"),
    "self-agreement": ("26", "26"),
    "self-consultation": ("8", "2"),
    "self-critique": ("108", "108"),
}


@pytest.mark.parametrize("demo", DEMONSTRATIONS, ids=lambda d: d.behaviour)
def test_demonstration_math(demo):
    right, student = EXPECTED[demo.behaviour]
    assert _last_boxed(demo.phrase) == right
    assert demo.phrase.rstrip().endswith("\\boxed{" + right + "}.")
    assert _last_boxed(demo.response) == student
    assert (student == right) == (demo.opinion == "correct")
    # Every spelled-out "a op b (op c ...) = d" step is true, except the one deliberate product slip.
    steps = [
        step
        for text in (demo.response, demo.reason, demo.phrase)
        for step in re.findall(r"(\d+(?: [*+-] \d+)+) = (\d+)", text)
    ]
    assert len(steps) >= 2
    for expr, result in steps:
        if expr == "6 * 7" and result == "48":
            continue  # the self-consultation slip, checked below
        assert eval(expr) == int(result), (demo.behaviour, expr, result)  # digits and + - * only
    assert "6 * 7 = 48" in DEMONSTRATIONS[2].response and "6 * 7 = 42" in DEMONSTRATIONS[2].reason
    assert (
        "3 boxes of 4 muffins" in DEMONSTRATIONS[0].response
        and "5 muffins in each box" in DEMONSTRATIONS[0].question
    )


def test_demonstrations_are_first_person_and_short():
    for demo in DEMONSTRATIONS:
        assert re.search(r"\b(I|my)\b", demo.reason)
        assert len(demo.reason) < 300 and len(demo.phrase) < 300
        assert not TAG_RE.search(demo.question + demo.response)


# ---------------------------------------------------------------- messages


def test_build_messages_structure():
    messages = build_messages("What is 2 + 2?", "2 + 2 = 4. \\boxed{4}")
    assert len(messages) == 1 + 2 * len(DEMONSTRATIONS) + 1 == 10
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * 4 + ["user"]
    assert all(set(m) == {"role", "content"} for m in messages)
    for demo, user, assistant in zip(DEMONSTRATIONS, messages[1:-1:2], messages[2:-1:2], strict=True):
        assert user["content"] == user_message(demo.question, demo.response)
        assert parse_feedback(assistant["content"]) == Feedback(demo.opinion, demo.reason, demo.phrase)
    final = messages[-1]["content"]
    assert "What is 2 + 2?" in final and "2 + 2 = 4. \\boxed{4}" in final
    assert "Reference" not in "".join(m["content"] for m in messages)


def test_system_prompt_names_the_tags():
    for tag in TAGS:
        assert f"<{tag}>" in SYSTEM_PROMPT and f"</{tag}>" in SYSTEM_PROMPT
    assert "\\boxed{}" in SYSTEM_PROMPT


@pytest.mark.parametrize(
    ("kind", "label"), [("answer", "Reference answer: 42"), ("solution", "Reference solution: ")]
)
def test_reference_only_in_final_turn_and_labelled(kind, label):
    messages = build_messages(
        "Q here", "R here", reference="42" if kind == "answer" else "6 * 7 = 42", reference_kind=kind
    )
    assert label in messages[-1]["content"]
    assert all("Reference" not in m["content"] for m in messages[:-1])
    final = messages[-1]["content"]
    assert final.index("Q here") < final.index("R here") < final.index("Reference")


def test_user_message_labels_and_bad_kind():
    text = user_message("Q here", "R here")
    assert text.startswith("Question:\nQ here") and "Student's response:\nR here" in text
    assert "Reference" not in text
    with pytest.raises(ValueError):
        user_message("Q", "R", reference="1", reference_kind="hint")


def test_prompt_size_budget():
    prefix = build_messages("", "")[:-1]
    chars = sum(len(m["content"]) for m in prefix)
    assert chars < 5_500, chars
