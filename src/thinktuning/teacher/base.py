"""What every teacher backend receives and returns, and the one method it must have.

A backend (a local model, an OpenAI-compatible server, the scripted research teacher) turns a list of
:class:`TeacherCase` into one :class:`TeacherResult` each, in order. Everything after that (splice, mask, loss)
is the same for all backends, so the trainer never asks which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from thinktuning.teacher.prompt import Feedback


@dataclass
class TeacherCase:
    """What the teacher is asked about: one question and one student response."""

    question: str
    response: str
    reference: str | None = None
    """Shown only when the run's ``teacher.sees_reference`` allows it (a labelled deviation from the paper)."""
    reference_kind: str = "answer"
    answer: str | None = None
    """The reference final answer, used only to close the phrase when the teacher may see the reference."""
    solution: str | None = None
    """The task's worked solution, whatever ``teacher.sees_reference`` says. Model and server teachers never read
    it; only the scripted research teacher does (it writes feedback from worked steps)."""
    gold_answer: str | None = None
    """The reference final answer, whatever ``teacher.sees_reference`` says (scripted teacher only)."""
    student_correct: bool | None = None
    """Whether the reward function scored the student's own response correct (scripted teacher only: it picks
    the behaviour by correctness, as docs/method.md describes)."""


@dataclass
class TeacherResult:
    feedback: Feedback | None
    raw: str
    error: str | None = None


@runtime_checkable
class Teacher(Protocol):
    """A teacher backend. ``name`` goes into run folders and tables (e.g. ``model``, ``http``, ``scripted``)."""

    name: str

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        """One result per case, in order. Must not raise for a bad answer: return ``feedback=None`` and a reason
        in ``error`` (the rollout then stays unguided and is counted as 'no feedback')."""
        ...

    def context(self) -> tuple[int | None, int] | None:
        """(context window in tokens or None if unknown, tokens of the fixed instructions/demonstrations) for the
        start-up length check, or None when the backend has no context window to check (scripted)."""
        ...
