"""Guidance: when to guide (schedule), whom to guide (selection), and how feedback joins a rollout (splice, mask).

All pure functions over numbers and token lists, so each rule of the method can be checked by hand.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def guidance_probability(
    step: int,
    total_steps: int,
    *,
    schedule: str = "linear",
    p_start: float = 0.10,
    p_end: float = 0.01,
    decay_fraction: float = 1 / 3,
    cutoff_epsilon: float | None = 0.05,
) -> float:
    """p_t for a 0-based ``step``; 0.0 once guidance is off for good.

    ``linear``/``cosine`` move from ``p_start`` to ``p_end`` over the first ``decay_fraction`` of training and stay
    at ``p_end`` afterwards; ``constant`` stays at ``p_start``. The recipe's cutoff: once p_t <= p_end +
    cutoff_epsilon, guidance switches off for good. Because the schedules are monotone, "for good" is the same as
    "at every step from the first one below the threshold", which keeps this a pure function of ``step`` (exact
    resume needs no schedule state).
    """
    if schedule == "constant":
        p = p_start
    else:
        horizon = max(1.0, decay_fraction * total_steps)
        frac = min(1.0, step / horizon)
        if schedule == "linear":
            p = p_start + (p_end - p_start) * frac
        elif schedule == "cosine":
            p = p_end + (p_start - p_end) * 0.5 * (1 + math.cos(math.pi * frac))
        else:
            raise ValueError(f"unknown guidance schedule {schedule!r}; use linear, constant or cosine")
    if cutoff_epsilon is not None and p <= p_end + cutoff_epsilon + 1e-12:
        return 0.0
    return p


def peak_probability(schedule: str, p_start: float, p_end: float, cutoff_epsilon: float | None) -> float:
    """The largest p_t that :func:`guidance_probability` gives at any step (0.0: guidance never happens), so that a
    config whose guidance can never guide anything is refused at start.

    Every schedule starts at ``p_start``, and a run whose ``p_start`` is at or below the cutoff threshold is off
    from step 0 (a rising schedule stays below its ``p_end + cutoff_epsilon`` too). Otherwise the schedules are
    monotone, so the peak is ``p_start`` or, without a cutoff, the ``p_end`` a rising schedule moves towards (an
    upper bound: a short run may stop before it gets there).
    """
    if cutoff_epsilon is not None:
        return 0.0 if p_start <= p_end + cutoff_epsilon + 1e-12 else p_start
    return p_start if schedule == "constant" else max(p_start, p_end)


def guided_count(num_eligible: int, p: float, min_per_group: int = 1) -> int:
    """k = max(min_per_group, floor(#eligible * p)), never more than the eligible ones; 0 when p is 0."""
    if p <= 0 or num_eligible == 0:
        return 0
    return min(num_eligible, max(min_per_group, math.floor(num_eligible * p + 1e-9)))


TARGETS = ("uniform", "zero_signal", "failing")
"""Which groups guidance may reach (``guidance.target``): any (the paper), only groups whose own rollouts all got
the same reward (no GRPO signal of their own), or only groups with no correct rollout."""


def targeted(own: Sequence[float], target: str) -> bool:
    """Whether a group with its own rollouts' rewards ``own`` is one ``target`` guides."""
    if target == "uniform":
        return True
    if target == "zero_signal":
        return len(set(own)) <= 1
    if target == "failing":
        return all(r <= 0 for r in own)
    raise ValueError(f"unknown guidance.target {target!r}; use one of {', '.join(TARGETS)}")


def select_guided(
    finished: Sequence[bool], group_size: int, p: float, rng: random.Random, min_per_group: int = 1,
    own: Sequence[float] | None = None, target: str = "uniform",
) -> list[int]:
    """Indices (into the flat rollout list) to guide: in each targeted group, k of its terminated rollouts, uniformly.

    With the paper's ``target="uniform"`` correctness plays no part: correct answers get feedback too. Rollouts cut
    at the length limit are never eligible (there is no end of thought to reflect on). ``own`` holds each rollout's
    own reward, which the other targets need.
    """
    if len(finished) % group_size:
        raise ValueError(f"{len(finished)} rollouts do not split into groups of {group_size}")
    if target != "uniform" and (own is None or len(own) != len(finished)):
        raise ValueError(f"guidance.target={target} needs each rollout's own reward")
    chosen: list[int] = []
    for start in range(0, len(finished), group_size):
        if target != "uniform" and not targeted(own[start : start + group_size], target):  # type: ignore[index]
            continue
        eligible = [i for i in range(start, start + group_size) if finished[i]]
        k = guided_count(len(eligible), p, min_per_group)
        chosen.extend(sorted(rng.sample(eligible, k)))
    return chosen


@dataclass
class Spliced:
    """A guided response: ``response_ids`` = student ids (end-of-turn removed) + teacher ids (+ end-of-turn)."""

    response_ids: list[int]
    teacher_mask: list[int]
    """1 on tokens that came from the teacher, 0 on the student's."""
    student_len: int
    teacher_len: int
    feedback_truncated: bool


def splice(
    student_ids: Sequence[int],
    teacher_ids: Sequence[int],
    eos_id: int,
    *,
    max_feedback_tokens: int = 512,
    append_eos: bool = True,
) -> Spliced:
    """Student's sampled ids, untouched except the trailing end-of-turn, then the teacher's ids, then end-of-turn.

    The teacher text is tokenized on its own (by the caller, with the student's tokenizer), so the boundary can
    never re-merge into different student tokens. Feedback longer than ``max_feedback_tokens`` is cut.
    """
    student = list(student_ids)
    if student and student[-1] == eos_id:
        student = student[:-1]
    teacher = list(teacher_ids)
    truncated = len(teacher) > max_feedback_tokens
    teacher = teacher[:max_feedback_tokens]
    tail = [eos_id] if append_eos else []
    ids = student + teacher + tail
    # the closing end-of-turn belongs to the teacher's part: the student never sampled it here
    mask = [0] * len(student) + [1] * (len(teacher) + len(tail))
    return Spliced(ids, mask, len(student), len(teacher) + len(tail), truncated)


def shaped_mask(teacher_mask: Sequence[int], guided: bool, scope: str = "rollout") -> list[int]:
    """Which tokens get the shaped objective: all tokens of a guided rollout (recipe) or the teacher's only."""
    if not guided:
        return [0] * len(teacher_mask)
    if scope == "rollout":
        return [1] * len(teacher_mask)
    if scope == "teacher":
        return list(teacher_mask)
    raise ValueError(f"unknown guidance.mask_scope {scope!r}; use rollout or teacher")
