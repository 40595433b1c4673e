"""The skeptic's baseline reward (evidence experiment, arm ``grpo-format``): a small bonus for a boxed *number*.

A bonus for the characters ``\\boxed{`` alone is gamed within 25 steps (empty boxes, ``\\boxed{}``); a bonus for a
number inside the last box is not. If guidance only teaches the format, GRPO with this bonus catches up with it.
Use: ``--set reward.functions=[experiments/format_reward.py:boxed_number]``.

A constant bonus is also earned by boxing a number the question already states, without working
(``experiments/RESULTS.md``, point 10). :func:`fading_boxed_number` (arm ``grpo-format-fade``) pays the bonus only
early and then leaves correctness alone, as the paper's guidance schedule does with the teacher: if that schedule's
lead is only a start for GRPO, this baseline catches up with it. :func:`boxed_new_number` closes that shortcut: it
pays only for a boxed number the question does not state (measured by ``format_bonus.py``; not run as an arm).
"""

from __future__ import annotations

import re

from thinktuning.eval.metrics import same_answer
from thinktuning.rewards.answers import extract_boxed

BONUS = 0.2
_NUMBER = re.compile(r"^\s*-?\d+(?:[.,]\d+)*\s*$")
_IN_TEXT = re.compile(r"\d+(?:\.\d+)?")


def question_numbers(question: str) -> list[str]:
    """The numbers a question states, as written (``analyze.py`` uses the same list to find copied answers)."""
    return _IN_TEXT.findall(question)


def _boxed_plain_number(text: str) -> str | None:
    """The last ``\\boxed{}``'s content if it is a plain number (right or wrong), else None."""
    box = extract_boxed(text)
    return box if box is not None and _NUMBER.match(box) else None


def boxed_number(prompts: list, completions: list[str], **columns) -> list[float]:
    """``BONUS`` where the completion's last ``\\boxed{}`` holds a plain number (right or wrong), else 0."""
    del prompts, columns
    return [BONUS if _boxed_plain_number(text) is not None else 0.0 for text in completions]


def boxed_new_number(prompts: list, completions: list[str], question: list[str], **columns) -> list[float]:
    """:func:`boxed_number`, except for a boxed number the question states: copying one is not working."""
    del prompts, columns
    out = []
    for text, q in zip(completions, question, strict=True):
        box = _boxed_plain_number(text)
        out.append(BONUS if box is not None and not any(same_answer(box, n) for n in question_numbers(q)) else 0.0)
    return out


FADE_FRACTION = 1 / 3
"""The bonus falls linearly to 0 over this fraction of the run: the paper's guidance schedule decays over the first
third too."""


def fading_boxed_number(prompts: list, completions: list[str], trainer_state=None, **columns) -> list[float]:
    """:func:`boxed_number` times ``1 - step / (FADE_FRACTION * max_steps)``, never below 0: the format signal at
    the start, correctness alone from step ``FADE_FRACTION * max_steps`` on."""
    if trainer_state is None:
        raise ValueError("fading_boxed_number needs the trainer's trainer_state (thinktuning passes it to reward "
                         "functions during training)")
    scale = max(0.0, 1.0 - trainer_state.global_step / (FADE_FRACTION * trainer_state.max_steps))
    return [scale * b for b in boxed_number(prompts, completions)]
