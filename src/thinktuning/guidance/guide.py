"""Step 2 of the data flow, the part with I/O: ask the teacher about the chosen rollouts and splice its feedback in.

The rules (schedule, selection, splice, masks) are pure functions in :mod:`thinktuning.guidance.rules`; this module
applies them to one step's rollouts with whichever teacher backend the run uses, and watches for a teacher that
has stopped giving usable feedback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from thinktuning.config.schema import GuidanceConfig, TeacherConfig
from thinktuning.guidance import family, rules
from thinktuning.rollout.types import Trajectory
from thinktuning.teacher.base import Teacher, TeacherCase, TeacherResult
from thinktuning.teacher.prompt import chat_prefix, feedback_text

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
    """Turns chosen rollouts into guided ones, the way ``guidance.mode`` says: build the teacher's cases, call it,
    splice (ThinkTuning), or put in the worked solution (expert), a prefix of it (hint), or the context for a
    refinement (refine). Where the student is to write next, the guide returns :class:`Continuation` s and the
    caller samples them: it holds no student model. ``teacher`` is None for the modes that need none."""

    def __init__(
        self,
        guidance: GuidanceConfig,
        teacher_cfg: TeacherConfig,
        teacher: Teacher | None,
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

    def __call__(self, chosen: list[Trajectory], step: int) -> list[Continuation]:
        """Turn each chosen rollout into a guided one, the way ``guidance.mode`` says. Returns what the student is to
        write next, if anything (ThinkTuning with ``continuation=student``, hint, refine): the caller samples it."""
        if not chosen:
            return []
        mode = self.guidance.mode
        if mode == "expert":
            return self._expert(chosen)
        if mode == "hint":
            return self._hint(chosen)
        results = self._ask(chosen, step)
        return self._refine(chosen, results) if mode == "refine" else self._splice(chosen, results)

    def _ask(self, chosen: list[Trajectory], step: int) -> list[TeacherResult]:
        if self.teacher is None:
            raise RuntimeError(f"guidance.mode={self.guidance.mode} needs a teacher, and none was built")
        results = self.teacher.feedback(self.cases(chosen))
        if len(results) != len(chosen):
            raise RuntimeError(f"teacher backend {self.teacher.name!r} returned {len(results)} results for "
                               f"{len(chosen)} requests")
        self.watch(results, step)
        for s, res in zip(chosen, results, strict=True):
            s.teacher_raw, s.teacher_error = res.raw, res.error
            s.no_feedback = res.feedback is None
        return results

    def _splice(self, chosen: list[Trajectory], results: list[TeacherResult]) -> list[Continuation]:
        """ThinkTuning: the teacher's words after the student's response (rules.splice)."""
        gd = self.guidance
        continuing = []
        for s, res in zip(chosen, results, strict=True):
            if res.feedback is None:
                continue
            text = feedback_text(res.feedback, gd.continuation)
            sp = rules.splice(
                s.response_ids, self._ids(text), self.eos_id, max_feedback_tokens=self.teacher_cfg.max_feedback_tokens,
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
                continuing.append(Continuation(s, s.prompt_ids + s.response_ids, replace=False))
        return continuing

    def _expert(self, chosen: list[Trajectory]) -> list[Continuation]:
        """LUFFY-style: the worked solution replaces the rollout, every token off-policy (shaped)."""
        for s in self._with_solution(chosen):
            text = family.expert_text(s.example.solution or "", s.example.reference)
            ids = [*self._ids(text)[: self.teacher_cfg.max_feedback_tokens], self.eos_id]
            self._replace(s, ids, [1] * len(ids), opinion="expert")
            s.teacher_span = (0, len(self._decode(ids)))
        return []

    def _hint(self, chosen: list[Trajectory]) -> list[Continuation]:
        """Prefix hints: the first part of the worked solution, then the student continues on-policy."""
        out = []
        for s in self._with_solution(chosen):
            solution = self._ids((s.example.solution or "").strip())
            ids = solution[: family.hint_length(len(solution), self.guidance.hint_fraction)]
            if not ids:
                s.no_feedback, s.teacher_error = True, "the worked solution is one token: nothing to give as a hint"
                continue
            self._replace(s, ids, [1] * len(ids), opinion="hint")
            if self.guidance.hint_loss == "mask":
                s.no_loss = list(range(len(ids)))
            s.teacher_span = (0, len(self._decode(ids)))
            out.append(Continuation(s, s.prompt_ids + ids, replace=False))
        return out

    def _refine(self, chosen: list[Trajectory], results: list[TeacherResult]) -> list[Continuation]:
        """Critique-GRPO-style: the teacher's reason is the critique; the student rewrites its answer with the
        critique in context, and that refinement (trained under the original prompt) replaces the rollout."""
        out = []
        for s, res in zip(chosen, results, strict=True):
            if res.feedback is None:
                continue
            critique = res.feedback.reason
            chat = chat_prefix(self.tokenizer, family.refine_messages(
                s.example.prompt, self._decode(s.response_ids), critique))
            s.guided, s.opinion, s.sampler_logprobs = True, res.feedback.opinion, None
            s.answer_leak = self.teacher_cfg.sees_reference == "none" and mentions(critique, s.example.reference)
            out.append(Continuation(s, self._ids(chat), replace=True))
        return out

    def _with_solution(self, chosen: list[Trajectory]) -> list[Trajectory]:
        """The chosen rollouts whose example has a worked solution; the others stay unguided, counted as no
        feedback with the reason."""
        for s in chosen:
            if not s.example.solution:
                s.no_feedback, s.teacher_error = True, "no worked solution for this example"
        return [s for s in chosen if s.example.solution]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _replace(s: Trajectory, ids: list[int], mask: list[int], opinion: str) -> None:
        """The rollout's response becomes ``ids``; the sampler's log-probs no longer describe it."""
        s.response_ids, s.teacher_mask, s.sampler_logprobs = ids, mask, None
        s.guided, s.opinion, s.finished = True, opinion, True


@dataclass
class Continuation:
    """What the student writes next for a guided rollout: sampled from ``context``, then appended on-policy to the
    response (``replace=False``) or replacing it (``replace=True``: a refinement, written in another context);
    :func:`thinktuning.guidance.family.extend_response`."""

    trajectory: Trajectory
    context: list[int]
    replace: bool


def mentions(text: str, answer: str) -> bool:
    """Whether ``text`` states ``answer`` as a whole token (``12`` in "it is 12." but not in "120")."""
    answer = answer.strip()
    return bool(answer) and re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", text) is not None
