"""The shape every problem takes, whatever its source: a stable id, the question, the prompt the student sees, the
reference answer, and a worked solution when one exists (which a small teacher may be allowed to see).
"""

from __future__ import annotations

from dataclasses import dataclass, field

INSTRUCTION = "Let's think step by step and provide your final answer inside \\boxed{} notation."

@dataclass(frozen=True)
class Example:
    """One problem, in the single shape the rest of the package consumes."""

    id: str
    question: str
    prompt: str
    reference: str
    solution: str | None = None


@dataclass
class DataStats:
    """What loading did, so a run can report how much of a file was usable and why rows were dropped."""

    source: str
    rows_read: int = 0
    rows_used: int = 0
    rows_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)


def build_prompt(question: str, instruction: str = INSTRUCTION) -> str:
    """The user-turn text: question, blank line, instruction (the recipe's prompt format).

    Benchmarks such as MATH-500 ship questions that already end with a ``\\boxed{}`` instruction; adding a
    second one would give the student two slightly different orders, so it is added only when absent.
    """
    question = question.strip()
    if not instruction or "\\boxed" in question:
        return question
    return f"{question}\n\n{instruction}"


# --------------------------------------------------------------------------------------------------------
# The built-in arithmetic task
# --------------------------------------------------------------------------------------------------------
