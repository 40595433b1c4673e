"""The rest of the guidance family as pure rules: what a chosen rollout becomes under ``guidance.mode`` expert, hint
or refine (docs/guidance-family.md). ThinkTuning's own splice is :func:`thinktuning.guidance.rules.splice`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from thinktuning.teacher.prompt import CLOSING, has_final_answer


def expert_text(solution: str, answer: str) -> str:
    """The expert trace: the worked solution, closed with the reference answer in ``\\boxed{}`` when it states no
    final answer of its own (so the paper's reward rule can score it)."""
    text = solution.strip()
    if has_final_answer(text):
        return text
    return f"{text}\n{CLOSING}{answer}}}."


def solution_steps(solution: str) -> list[str]:
    """The solution's steps: its non-empty lines, or its sentences when it is one line."""
    lines = [line.strip() for line in solution.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    text = lines[0] if lines else ""
    return [part for part in re.split(r"(?<=[.!?])\s+", text) if part]


def hint_count(steps: int, fraction: float) -> int:
    """How many of ``steps`` the hint gives: ``round(steps * fraction)``, at least one and never all of them (the
    student must write something); 0 for a one-step solution, which cannot be split."""
    if steps < 2:
        return 0
    return min(steps - 1, max(1, math.floor(steps * fraction + 0.5)))


def hint_prefix(solution: str, fraction: float) -> str:
    """The first ``hint_count`` steps of the worked solution, one per line, ending in a newline for the student to
    continue from; "" when the solution cannot be split."""
    steps = solution_steps(solution)
    k = hint_count(len(steps), fraction)
    return "".join(f"{s}\n" for s in steps[:k])


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
