"""Step 2 of the data flow, the part with I/O: ask the teacher about the chosen rollouts and splice its feedback in.

The rules (schedule, selection, splice, masks) are pure functions in :mod:`thinktuning.guidance.rules`; this module
applies them to one step's rollouts with whichever teacher backend the run uses, and watches for a teacher that
has stopped giving usable feedback.
"""

from __future__ import annotations

import logging
import re

from thinktuning.config.schema import GuidanceConfig, TeacherConfig
from thinktuning.guidance import rules
from thinktuning.rollout.types import Trajectory
from thinktuning.teacher.base import Teacher, TeacherCase, TeacherResult
from thinktuning.teacher.prompt import feedback_text

log = logging.getLogger(__name__)



class TeacherWatch:
    """Warn (once) when the teacher gave no usable feedback on any request of ``silent_steps`` guided steps in a
    row: a broken teacher (server down, wrong chat template) should not pass silently as 'few guided rollouts'."""

    def __init__(self, silent_steps: int = 5, logger: logging.Logger = log) -> None:
        self.silent_steps = silent_steps
        self.log = logger
        self._steps = 0
        self._requests = 0
        self.warned = False

    def __call__(self, results: list[TeacherResult], step: int) -> None:
        if any(r.feedback is not None for r in results):
            self._steps, self._requests = 0, 0
            return
        self._steps += 1
        self._requests += len(results)
        if self._steps >= self.silent_steps and not self.warned:
            self.warned = True
            errors = sorted({r.error for r in results if r.error})
            self.log.warning(
                "the teacher gave no usable feedback for any of the %d rollouts it was asked about in the last %d "
                "guided steps (up to step %d): it seems broken%s. Those rollouts stay unguided (counted in "
                "guidance/no_feedback; its raw output is teacher_raw in rollouts.jsonl). Check teacher.backend, "
                "teacher.model, its chat template and teacher.max_reason_tokens / max_phrase_tokens",
                self._requests, self._steps, step + 1, f" (last errors: {'; '.join(errors[:3])})" if errors else "",
            )


class Guide:
    """Turns chosen rollouts into guided ones: build the teacher's cases, call it, splice, record.

    With ``guidance.continuation=student`` the caller samples the rest on-policy after the teacher's reason: the
    guide returns the trajectories to continue and holds no model.
    """

    def __init__(
        self,
        guidance: GuidanceConfig,
        teacher_cfg: TeacherConfig,
        teacher: Teacher,
        tokenizer,
        eos_id: int,
        watch: TeacherWatch | None = None,
    ) -> None:
        self.guidance, self.teacher_cfg = guidance, teacher_cfg
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.watch = watch or TeacherWatch()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def cases(self, chosen: list[Trajectory]) -> list[TeacherCase]:
        """What the teacher is shown about each chosen rollout (``teacher.sees_reference`` decides the extra)."""
        sees = self.teacher_cfg.sees_reference
        out = []
        for s in chosen:
            ex = s.example
            if sees == "solution" and ex.solution:
                ref, kind = f"{ex.solution}\nFinal answer: {ex.reference}", "solution"
            elif sees != "none":
                ref, kind = ex.reference, "answer"
            else:
                ref, kind = None, "answer"
            out.append(TeacherCase(
                ex.question, self._decode(s.response_ids), ref, kind, ex.reference if sees != "none" else None,
                solution=ex.solution, gold_answer=ex.reference, student_correct=bool(s.student_correct > 0),
            ))
        return out

    def __call__(self, chosen: list[Trajectory], step: int) -> list[Trajectory]:
        """Ask the teacher about each chosen rollout and splice its feedback in (or count 'no feedback'). Returns the
        guided trajectories the student is to continue (``guidance.continuation=student``; else none)."""
        if not chosen:
            return []
        gd = self.guidance
        results = self.teacher.feedback(self.cases(chosen))
        if len(results) != len(chosen):
            raise RuntimeError(f"teacher backend {self.teacher.name!r} returned {len(results)} results for "
                               f"{len(chosen)} requests")
        self.watch(results, step)
        continuing = []
        for s, res in zip(chosen, results, strict=True):
            s.teacher_raw, s.teacher_error = res.raw, res.error
            if res.feedback is None:
                s.no_feedback = True
                continue
            text = feedback_text(res.feedback, gd.continuation)
            teacher_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            sp = rules.splice(
                s.response_ids, teacher_ids, self.eos_id, max_feedback_tokens=self.teacher_cfg.max_feedback_tokens,
                append_eos=gd.continuation == "teacher",
            )
            student_text = self._decode(s.response_ids[: sp.student_len])
            s.response_ids, s.teacher_mask = sp.response_ids, sp.teacher_mask
            s.guided, s.opinion, s.finished = True, res.feedback.opinion, True
            if gd.boundary == "skip" and sp.teacher_len:
                s.no_loss = [sp.student_len]  # where the student's end-of-turn was
            s.teacher_span = (len(student_text), len(self._decode(s.response_ids)))
            s.answer_leak = self.teacher_cfg.sees_reference == "none" and mentions(text, s.example.reference)
            if gd.continuation == "student":
                continuing.append(s)
        return continuing


def mentions(text: str, answer: str) -> bool:
    """Whether ``text`` states ``answer`` as a whole token (``12`` in "it is 12." but not in "120")."""
    answer = answer.strip()
    return bool(answer) and re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", text) is not None
