"""The records that flow through a step: a sampled :class:`Rollout`, and the :class:`Trajectory` that every later
phase (guidance, rewards, advantages, the update, the logs) reads and extends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from thinktuning.data.examples import Example


@dataclass
class Rollout:
    """One sampled response. ``logprobs[j]`` is log pi(response_ids[j]) under the temperature-scaled policy."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finished: bool
    """True when the response ended with the end-of-turn token (False: cut at the length limit)."""
    meta: dict = field(default_factory=dict)


log = logging.getLogger(__name__)



@dataclass
class Trajectory:
    """One rollout as trained on: ids, which tokens are shaped, reward and advantage, plus what to log."""

    example: Example
    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    finished: bool
    student_correct: float = 0.0
    guided: bool = False
    teacher_mask: list[int] = field(default_factory=list)
    shaped_mask: list[int] = field(default_factory=list)
    final_correct: float | None = None
    """A guided rollout's correctness after the splice (the teacher's accounting); None when unguided."""
    answer_leak: bool = False
    """The teacher's words contain the reference answer although it was not shown it (``sees_reference=none``)."""
    no_loss: list[int] = field(default_factory=list)
    """Response positions that carry no loss (``guidance.boundary=skip``: the splice boundary)."""
    teacher_span: tuple[int, int] | None = None
    opinion: str | None = None
    no_feedback: bool = False
    teacher_raw: str | None = None
    teacher_error: str | None = None
    text: str = ""
    reward: float = 0.0
    advantage: float = 0.0
    sampler_logprobs: list[float] | None = None
    """Log-probs that another rollout engine (vLLM) reported for the sampled response; None: the trainer's own."""

