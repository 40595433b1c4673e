"""The scripted teacher: a research instrument, not the paper's teacher.

A 135M model teacher writes incoherent feedback even when it is shown the worked solution (measured), so on CPU a
run with it cannot tell whether the *method* works or only that its teacher is weak. This backend takes the
teacher's quality out of the question: it writes the feedback itself, from templates, for tasks whose rows carry
worked steps (the built-in ``arithmetic`` task and GSM8K). The result goes through exactly the path a model
teacher's output does (the same tagged text, the same parser, splice, mask and loss), so what changes between a
``model`` run and a ``scripted`` run is the feedback's quality and nothing else.

What it does, per case:

* **Behaviour** (docs/method.md, "The four cognitive behaviours"), chosen by the reward's verdict on the student's own
  response: an incorrect response gets *self-conflict* or *self-consultation*, a correct one *self-agreement* or
  *self-critique*. An incorrect response whose stated number is the reference anyway (e.g. right number, missing
  ``\\boxed{}`` under a strict reward) gets self-consultation: claiming a contradiction would be false there.
* **Reason**, in the student's first person: the behaviour's reflection, then the worked steps.
* **Phrase**: a short conclusion ending with ``The final answer is \\boxed{N}.`` (``N`` = the reference answer).

Unlike the paper's teacher it knows the worked solution, the reference answer and whether the student was right.
That is the point of the instrument, and every run with it says so (``ThinkTuningConfig.deviations``).

Wording varies over several templates per behaviour, drawn with a ``random.Random`` seeded from the run seed, the
question and the response: the same case in the same run always gets the same words (exact resume holds), and
different cases or seeds get different ones.
"""

from __future__ import annotations

import hashlib
import random
import re

from thinktuning.rewards.answers import extract_answer
from thinktuning.teacher.base import TeacherCase, TeacherResult
from thinktuning.teacher.prompt import Feedback, feedback_text, parse_feedback, render_feedback

__all__ = ["BEHAVIOURS_BY_CORRECTNESS", "ScriptedTeacher", "case_rng", "clean_solution", "write_feedback"]

BEHAVIOURS_BY_CORRECTNESS: dict[bool, tuple[str, str]] = {
    False: ("self-conflict", "self-consultation"),
    True: ("self-agreement", "self-critique"),
}
"""The two behaviours docs/method.md demonstrates on an incorrect (False) and on a correct (True) response."""

FINAL = "The final answer is \\boxed{{{answer}}}."

# ----------------------------------------------------------------------------------------------- templates
# Placeholders: {given} = the question's numbers ("16, 3 and 4"), {mine} = "my answer of 12" / "my answer",
# {x} = the student's wrong answer, {n} = the reference answer. Every opener is written so that the package's
# cue detector (thinktuning.eval.reflection) recognises its behaviour; tests/teacher/test_scripted.py checks that.

_OPENERS: dict[str, tuple[str, ...]] = {
    "self-conflict": (
        "Wait, that is not what the problem said. It gives {given}, and {mine} does not follow from them.",
        "Hold on, the problem actually gives {given}, and {mine} does not fit them.",
        "Hmm, {mine} contradicts what the problem tells me: it gives {given}.",
        "Let me reread the problem. It gives {given}, and {mine} is inconsistent with it.",
    ),
    "self-consultation": (
        'If my teacher read this, she would ask: "Are you sure the answer is {x}?"',
        'A mentor would ask me: "Does {x} really follow from the question?"',
        'Let me ask myself what a tutor would: "Is {x} really right?"',
        'I can hear my teacher asking: "Did you check where {x} comes from?"',
    ),
    "self-agreement": (
        "Let me retrace my steps to make sure.",
        "Before I finish, I should go back over my work.",
        "Let me verify my answer by checking each step.",
        "I want to be certain, so I will go back over the steps.",
    ),
    "self-critique": (
        "My answer is right, but I was careless: I never checked it.",
        "I got the right answer, but I rushed and skipped the reasoning.",
        "The answer is right, but I should have shown why it is right.",
        "My answer happens to be right, but that was sloppy work. Let me be more careful.",
    ),
}

# self-consultation when the student stated no distinct wrong answer (none at all, or the right number unboxed)
_CONSULT_NO_ANSWER = (
    'If my teacher read this, she would ask: "Are you sure you stated a final answer?"',
    'A mentor would ask me: "Where exactly is your final answer?"',
    'Let me ask myself what a tutor would: "Did I actually finish the problem?"',
    'I can hear my teacher asking: "Did you show every step to your answer?"',
)

_BRIDGES: dict[str, tuple[str, ...]] = {
    "self-conflict": (
        "Let me redo it from what it actually says:",
        "Redoing the work with the problem's own numbers:",
        "So I will start again from the problem:",
    ),
    "self-consultation": (
        "I am not sure, so let me work through it carefully:",
        "Honestly, I cannot defend it. Let me redo it step by step:",
        "That question makes me check the work again:",
    ),
    "self-agreement": (
        "Step by step:",
        "Going through it again:",
        "Here is each step once more:",
    ),
    "self-critique": (
        "Doing it properly:",
        "Here it is step by step:",
        "Writing each step out:",
    ),
}

# a closing sentence for the reason; only self-agreement has one (it confirms what the steps showed)
_CONFIRMS = ("Each step checks out.", "Everything is consistent.", "It all checks out.")

_PHRASES: dict[str, tuple[str, ...]] = {
    "self-conflict": (
        "So the answer is {n}, not {x}.",
        "With the problem's numbers used correctly, I get {n}.",
        "That is what the problem actually asks, so the answer is {n}.",
    ),
    "self-consultation": (
        "So my answer of {x} was a slip; it is {n}.",
        "Now I am sure: it is {n}.",
        "That settles it: the answer is {n}.",
    ),
    "self-agreement": (
        "So my answer of {n} holds.",
        "My answer stands.",
        "So I was right: it is {n}.",
    ),
    "self-critique": (
        "Now the answer is justified, not just written down.",
        "Now I have actually shown that it is {n}.",
        "This time every step is checked.",
    ),
}

# ------------------------------------------------------------------------------------------------ helpers

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_MAX_GIVEN = 5  # numbers of the question quoted back in a self-conflict reason
_MAX_ANSWER_CHARS = 24  # a longer "answer" is not quoted back (it is a sentence, not a number)


def clean_solution(text: str | None) -> str:
    """Worked steps as plain sentences on one line, ready to splice into a first-person reason.

    GSM8K solutions carry calculator annotations (``<<16-3-4=9>>``) and end with a ``#### 18`` line; both are
    dropped (data.py already drops them, but a case may come from elsewhere), as is everything after ``####``.
    Lines become sentences: stripped, ending in ``.``, ``!`` or ``?``, joined by single spaces.
    """
    if not text:
        return ""
    text = _CALCULATOR.sub("", text.split("####", 1)[0])
    sentences = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        if line[-1] not in ".!?":
            line = line.rstrip(",;:") + "."
        sentences.append(line)
    return " ".join(sentences)


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def question_numbers(question: str) -> list[str]:
    """The distinct numbers written in the question, in order, at most a few (a self-conflict reason quotes them)."""
    out: list[str] = []
    for m in _NUMBER.finditer(question):
        num = m.group().rstrip(",")
        if num not in out:
            out.append(num)
    return out[:_MAX_GIVEN]


def _same_number(a: str, b: str) -> bool:
    norm = lambda s: s.replace(",", "").replace("$", "").strip().rstrip(".")  # noqa: E731
    return norm(a) == norm(b)


def wrong_answer(response: str, gold: str) -> str | None:
    """The student's stated answer (its last ``\\boxed{}``, else its last number) when it is short, brace-free and
    differs from the reference; None otherwise (there is then no wrong number to quote back)."""
    stated = extract_answer(response, fallback="last_number")
    if stated is None:
        return None
    stated = stated.strip()
    if not stated or len(stated) > _MAX_ANSWER_CHARS or "{" in stated or "}" in stated or _same_number(stated, gold):
        return None
    return stated


def case_rng(seed: int, case: TeacherCase) -> random.Random:
    """A generator seeded from the run seed and the case's text (stable across processes, unlike ``hash``)."""
    key = repr((seed, case.question, case.response)).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def write_feedback(case: TeacherCase, rng: random.Random, behaviour: str | None = None) -> tuple[str, str]:
    """(behaviour, tagged feedback text) for one case; ``behaviour`` None = chosen by correctness with ``rng``.

    Raises ValueError when the case cannot be scripted (no worked steps, no reference answer, no verdict), or when
    ``behaviour`` does not fit the verdict: the caller turns that into 'no feedback'.
    """
    steps = clean_solution(case.solution)
    if not steps:
        raise ValueError("the problem has no worked solution to script feedback from")
    if case.gold_answer is None or not str(case.gold_answer).strip():
        raise ValueError("the problem has no reference answer")
    if case.student_correct is None:
        raise ValueError("the reward's verdict on the student's response (student_correct) is missing")
    gold = str(case.gold_answer).strip()
    allowed = BEHAVIOURS_BY_CORRECTNESS[bool(case.student_correct)]
    x = None if case.student_correct else wrong_answer(case.response, gold)
    if behaviour is None:
        # with no distinct wrong number there is no contradiction to point at: ask instead
        behaviour = "self-consultation" if not case.student_correct and x is None else rng.choice(allowed)
    if behaviour not in allowed:
        verdict = "a correct" if case.student_correct else "an incorrect"
        raise ValueError(f"behaviour {behaviour!r} does not fit {verdict} response; use one of {allowed}")
    if behaviour == "self-conflict" and x is None:
        raise ValueError("self-conflict needs a wrong answer stated by the student to contradict")
    nums = question_numbers(case.question)
    fill = {
        "given": _listing(nums) if nums else "its numbers",
        "mine": f"my answer of {x}" if x is not None else "my answer",
        "x": x, "n": gold,
    }
    openers = _CONSULT_NO_ANSWER if behaviour == "self-consultation" and x is None else _OPENERS[behaviour]
    # templates are filled before the steps are appended: braces in a solution must never be read as fields
    reason = f"{rng.choice(openers).format(**fill)} {rng.choice(_BRIDGES[behaviour])} {steps}"
    if behaviour == "self-agreement":
        reason += f" {rng.choice(_CONFIRMS)}"
    phrases = _PHRASES[behaviour]
    if x is None:  # the "not {x}" variant has nothing to name
        phrases = tuple(p for p in phrases if "{x}" not in p)
    phrase = f"{rng.choice(phrases).format(**fill)} {FINAL.format(answer=gold)}"
    opinion = "correct" if case.student_correct else "incorrect"
    return behaviour, render_feedback(opinion, reason, phrase)


class ScriptedTeacher:
    """Feedback written from templates and the task's worked steps (a research instrument, see the module doc).

    ``tokenizer`` and ``max_feedback_tokens`` (both optional) let it refuse feedback that the splice would cut:
    a cut phrase loses its final answer, which would silently turn a guided rollout's reward into 0.
    """

    name = "scripted"

    def __init__(self, seed: int = 0, *, tokenizer=None, max_feedback_tokens: int | None = None) -> None:
        self.seed = seed
        self.tokenizer = tokenizer
        self.max_feedback_tokens = max_feedback_tokens

    def context(self) -> None:
        """No model, so no context window to check at start."""
        return None

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        return [self._one(c) for c in cases]

    def _one(self, case: TeacherCase) -> TeacherResult:
        try:
            behaviour, text = write_feedback(case, case_rng(self.seed, case))
        except ValueError as err:
            return TeacherResult(None, "", f"scripted teacher: {err}")
        # the behaviour goes in front of the tags: the parser ignores it, rollouts.jsonl's teacher_raw keeps it
        raw = f"[scripted: {behaviour}]\n{text}"
        fb: Feedback | None = parse_feedback(raw)
        if fb is None:  # render_feedback already guarantees this parses; kept so 'no feedback' has one definition
            return TeacherResult(None, raw, "scripted teacher: unusable feedback")
        if self.tokenizer is not None and self.max_feedback_tokens is not None:
            n = len(self.tokenizer(feedback_text(fb), add_special_tokens=False)["input_ids"])
            if n > self.max_feedback_tokens:
                return TeacherResult(None, raw, f"scripted teacher: the feedback is {n} tokens, over "
                                                f"teacher.max_feedback_tokens={self.max_feedback_tokens} (the cut "
                                                "would drop its final answer); raise teacher.max_feedback_tokens")
        return TeacherResult(fb, raw, None)
