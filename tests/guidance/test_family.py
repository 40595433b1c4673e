"""The guidance family's pure rules (guidance/family.py), by hand."""

from __future__ import annotations

import pytest

from thinktuning.guidance.family import (
    expert_text,
    extend_response,
    hint_length,
    refine_messages,
)


def test_expert_text_closes_with_the_boxed_answer_only_when_missing():
    assert expert_text("27 + 82 = 109.\n", "109") == "27 + 82 = 109.\nThe final answer is \\boxed{109}."
    boxed = "27 + 82 = 109, so the answer is \\boxed{109}."
    assert expert_text(boxed, "109") == boxed


@pytest.mark.parametrize(("tokens", "fraction", "given"), [
    (1, 0.5, 0),   # one token cannot be split
    (2, 0.5, 1),
    (3, 0.5, 2),   # round(1.5) = 2
    (4, 0.5, 2),
    (4, 0.9, 3),   # never all of them
    (4, 0.01, 1),  # at least one
])
def test_hint_length(tokens, fraction, given):
    assert hint_length(tokens, fraction) == given


def test_refine_messages_put_the_critique_in_the_next_user_turn():
    msgs = refine_messages("What is 2 + 2?", "2 + 2 = 5", "  I added wrong.  ")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == "2 + 2 = 5"
    assert msgs[2]["content"].startswith("Here is feedback on your answer:\nI added wrong.\n\n")
    assert msgs[2]["content"].endswith("inside \\boxed{}.")


def test_extend_response_appends_on_policy_or_replaces_off_policy():
    assert extend_response([5, 6], [1, 1], [7, 8, 2], replace=False) == ([5, 6, 7, 8, 2], [1, 1, 0, 0, 0])
    assert extend_response([5, 6], [0, 0], [7, 2], replace=True) == ([7, 2], [1, 1])
