"""The skeptic's baseline reward (evidence experiment, arm ``grpo-format``): a small bonus for a boxed *number*.

A bonus for the characters ``\\boxed{`` alone is gamed within 25 steps (empty boxes, ``\\boxed{}``); a bonus for a
number inside the last box is not. If guidance only teaches the format, GRPO with this bonus catches up with it.
Use: ``--set reward.functions=[experiments/format_reward.py:boxed_number]``.
"""

from __future__ import annotations

import re

from thinktuning.rewards.answers import extract_boxed

BONUS = 0.2
_NUMBER = re.compile(r"^\s*-?\d+(?:[.,]\d+)*\s*$")


def boxed_number(prompts: list, completions: list[str], **columns) -> list[float]:
    """``BONUS`` where the completion's last ``\\boxed{}`` holds a plain number (right or wrong), else 0."""
    del prompts, columns
    out = []
    for text in completions:
        box = extract_boxed(text)
        out.append(BONUS if box is not None and _NUMBER.match(box) else 0.0)
    return out
