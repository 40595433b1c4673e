"""The rest of the guidance family as pure rules: what a chosen rollout becomes under ``guidance.mode`` expert, hint
or refine (docs/guidance-family.md). ThinkTuning's own splice is :func:`thinktuning.guidance.rules.splice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from thinktuning.teacher.prompt import CLOSING, has_final_answer


def expert_text(solution: str, answer: str) -> str:
    """The expert trace: the worked solution, closed with the reference answer in ``\\boxed{}`` when it states no
    final answer of its own (so the paper's reward rule can score it)."""
    text = solution.strip()
    if has_final_answer(text):
        return text
    return f"{text}\n{CLOSING}{answer}}}."


def hint_length(tokens: int, fraction: float) -> int:
    """How many of a worked solution's ``tokens`` the hint gives: ``round(tokens * fraction)``, at least one and never
    all of them (the student must write something); 0 for a solution of one token, which cannot be split."""
    if tokens < 2:
        return 0
    return min(tokens - 1, max(1, math.floor(tokens * fraction + 0.5)))


REFINE_REQUEST = ("Here is feedback on your answer:\n{critique}\n\nUsing it, solve the problem again from the start, "
                  "and give your final answer inside \\boxed{{}}.")
"""The user turn that follows the student's first answer when it is asked to refine it (``guidance.mode=refine``)."""


def refine_messages(prompt: str, response: str, critique: str) -> list[dict[str, str]]:
    """The conversation the student refines in: the question, its own answer, the critique as the next user turn."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response},
            {"role": "user", "content": REFINE_REQUEST.format(critique=critique.strip())}]


def extend_response(response_ids: Sequence[int], teacher_mask: Sequence[int], new_ids: Sequence[int], *,
                    replace: bool) -> tuple[list[int], list[int]]:
    """A response after the student wrote ``new_ids``: appended on-policy (mask 0) after what is there, or, when it
    wrote them in another context (a refinement, which saw the critique), replacing the response and marked as not
    sampled from the policy given this prompt (mask 1), so the shaped objective applies."""
    if replace:
        return list(new_ids), [1] * len(new_ids)
    return [*response_ids, *new_ids], [*teacher_mask, *([0] * len(new_ids))]
