"""The guidance step with I/O (guide.py): what the teacher is shown, and how its answers are applied."""

from __future__ import annotations

import pytest

from thinktuning.config.load import load_config
from thinktuning.data.examples import Example
from thinktuning.guidance.guide import Continuation, Guide, TeacherWatch
from thinktuning.rollout.types import Trajectory
from thinktuning.teacher.base import TeacherCase, TeacherResult
from thinktuning.teacher.prompt import parse_feedback

GOOD = ("<opinion>incorrect</opinion><reason>Wait, 3 + 4 is 7, not 8.</reason>"
        "<phrase>The final answer is \\boxed{7}.</phrase>")


class RecordingTeacher:
    """A real (if trivial) backend: answers every case with fixed tagged text, and keeps what it was shown."""

    name = "recording"

    def __init__(self, raw: str | None = GOOD, extra: int = 0) -> None:
        self.raw, self.extra, self.seen = raw, extra, []

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        self.seen.extend(cases)
        out = [TeacherResult(parse_feedback(self.raw), self.raw) if self.raw else TeacherResult(None, "", "down")
               for _ in cases]
        return out + out[: self.extra]

    def context(self):
        return None


def _seq(tok, text: str, correct: float = 0.0) -> Trajectory:
    ex = Example("a-1", "What is 3 + 4?", "What is 3 + 4?\n\nThink.", "7", solution="3 + 4 = 7.")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return Trajectory(ex, 0, [1, 2], ids, True, student_correct=correct, teacher_mask=[0] * len(ids))


@pytest.mark.parametrize(("sees", "reference", "kind", "answer"), [
    ("none", None, "answer", None),
    ("answer", "7", "answer", "7"),
    ("solution", "3 + 4 = 7.\nFinal answer: 7", "solution", "7"),
])
def test_cases_show_the_teacher_only_what_sees_reference_allows(smol_tokenizer, sees, reference, kind, answer):
    cfg = load_config("cpu-demo", [f"teacher.sees_reference={sees}"])
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)
    (case,) = guide.cases([_seq(smol_tokenizer, "3 + 4 = 8", correct=0.0)])
    assert (case.reference, case.reference_kind, case.answer) == (reference, kind, answer)
    assert case.response == "3 + 4 = 8"
    # the scripted research teacher's inputs are always there; model/server teachers never read them
    assert (case.solution, case.gold_answer, case.student_correct) == ("3 + 4 = 7.", "7", False)


def test_feedback_is_spliced_and_recorded(smol_tokenizer):
    cfg = load_config("cpu-demo")
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    guide([s], 0)
    assert s.guided and s.opinion == "incorrect" and s.finished and not s.no_feedback
    text = smol_tokenizer.decode(s.response_ids, skip_special_tokens=True)
    start, end = s.teacher_span
    assert "Wait, 3 + 4 is 7" in text[start:end] and text[end - 1] == "."
    assert sum(s.teacher_mask) > 0 and len(s.teacher_mask) == len(s.response_ids)


def test_a_failed_request_leaves_the_rollout_unguided_and_keeps_the_error(smol_tokenizer):
    cfg = load_config("cpu-demo")
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(raw=None), smol_tokenizer, smol_tokenizer.eos_token_id)
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    before = list(s.response_ids)
    guide([s], 0)
    assert s.no_feedback and not s.guided and s.response_ids == before and s.teacher_error == "down"


def test_a_backend_returning_the_wrong_number_of_results_is_an_error(smol_tokenizer):
    cfg = load_config("cpu-demo")
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(extra=1), smol_tokenizer, smol_tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match="returned 2 results for 1 requests"):
        guide([_seq(smol_tokenizer, "x")], 0)


def test_student_continuation_is_handed_back_to_the_trainer(smol_tokenizer):
    cfg = load_config("cpu-demo", ["guidance.continuation=student"])
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    (c,) = guide([s], 3)
    assert c.trajectory is s and c.context == s.prompt_ids + s.response_ids and not c.replace
    assert guide([], 3) == []
    teacher_cfg = load_config("cpu-demo")  # continuation=teacher: the teacher's phrase ends it, nothing to continue
    guide = Guide(teacher_cfg.guidance, teacher_cfg.teacher, RecordingTeacher(), smol_tokenizer,
                  smol_tokenizer.eos_token_id)
    assert guide([_seq(smol_tokenizer, "3 + 4 = 8")], 3) == []


def test_watch_names_the_last_errors(caplog):
    watch = TeacherWatch(silent_steps=1)
    with caplog.at_level("WARNING", logger="thinktuning.guidance.guide"):
        watch([TeacherResult(None, "", "connection refused")], 0)
    assert "seems broken (last errors: connection refused)" in caplog.text


def test_boundary_skip_marks_where_the_student_had_stopped(smol_tokenizer):
    cfg = load_config("cpu-scripted", ["guidance.boundary=skip"])
    guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    student_len = len(s.response_ids)  # the student's tokens stay; the teacher's first token comes right after
    guide([s], 0)
    assert s.no_loss == [student_len]
    assert s.teacher_mask[student_len] == 1 and s.teacher_mask[student_len - 1] == 0  # the first teacher token
    plain = load_config("cpu-scripted")
    t = _seq(smol_tokenizer, "3 + 4 = 8")
    Guide(plain.guidance, plain.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)([t], 0)
    assert t.no_loss == []


def test_mentions_finds_the_answer_as_a_whole_number():
    from thinktuning.guidance.guide import mentions

    assert mentions("So it is 12.", "12") and mentions("12 apples", "12") and mentions("(12)", "12")
    assert not mentions("It is 120.", "12") and not mentions("about 1.12 of it", "12") and not mentions("x", "")
    assert not mentions("It is 12.5 now", "12")


def test_an_answer_the_teacher_was_not_shown_is_flagged_as_a_leak(smol_tokenizer):
    for sees, leak in (("none", True), ("answer", False)):
        cfg = load_config("cpu-demo", [f"teacher.sees_reference={sees}"])
        guide = Guide(cfg.guidance, cfg.teacher, RecordingTeacher(), smol_tokenizer, smol_tokenizer.eos_token_id)
        s = _seq(smol_tokenizer, "3 + 4 = 8")  # the RecordingTeacher's feedback says 3 + 4 is 7, the reference
        guide([s], 0)
        assert s.answer_leak is leak


# ------------------------------------------------------------------------------------------- the family


def _guide(tok, mode: str, teacher=None, extra=()):
    cfg = load_config("cpu-demo", [f"guidance.mode={mode}", *extra])
    return Guide(cfg.guidance, cfg.teacher, teacher, tok, tok.convert_tokens_to_ids("<|im_end|>"))


def test_expert_replaces_the_rollout_with_the_worked_solution(smol_tokenizer):
    guide = _guide(smol_tokenizer, "expert")  # no teacher: expert guidance asks none
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    s.sampler_logprobs = [-1.0] * len(s.response_ids)
    assert guide([s], 0) == []
    eos = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert smol_tokenizer.decode(s.response_ids) == "3 + 4 = 7.\nThe final answer is \\boxed{7}.<|im_end|>"
    assert s.response_ids[-1] == eos and s.teacher_mask == [1] * len(s.response_ids)
    assert s.guided and s.finished and s.opinion == "expert" and s.sampler_logprobs is None
    assert s.teacher_span == (0, len("3 + 4 = 7.\nThe final answer is \\boxed{7}."))


def test_expert_and_hint_leave_an_example_without_a_solution_unguided(smol_tokenizer):
    for mode in ("expert", "hint"):
        s = _seq(smol_tokenizer, "3 + 4 = 8")
        s.example = Example("a-2", "q", "q", "7", solution=None)
        before = list(s.response_ids)
        assert _guide(smol_tokenizer, mode)([s], 0) == []
        assert not s.guided and s.no_feedback and s.response_ids == before
        assert s.teacher_error == "no worked solution for this example"


def test_hint_gives_a_prefix_the_student_continues(smol_tokenizer):
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    s.example = Example("a-3", "q", "q", "10", solution="3 + 4 = 7, and 7 + 3 = 10.")
    (c,) = _guide(smol_tokenizer, "hint")([s], 0)
    solution = smol_tokenizer("3 + 4 = 7, and 7 + 3 = 10.", add_special_tokens=False)["input_ids"]
    n = len(s.response_ids)
    assert s.response_ids == solution[:n] and n == round(len(solution) / 2)  # hint_fraction 0.5 of its tokens
    assert s.teacher_mask == [1] * n and s.no_loss == list(range(n))  # hint_loss=mask
    assert c == Continuation(s, s.prompt_ids + s.response_ids, replace=False) and s.opinion == "hint"
    shaped = _seq(smol_tokenizer, "x")
    shaped.example = s.example
    _guide(smol_tokenizer, "hint", extra=["guidance.hint_loss=shaped"])([shaped], 0)
    assert shaped.no_loss == [] and shaped.teacher_mask == [1] * len(shaped.response_ids)


def test_refine_asks_for_a_critique_and_hands_back_the_refinement_context(smol_tokenizer):
    teacher = RecordingTeacher()
    s = _seq(smol_tokenizer, "3 + 4 = 8")
    s.sampler_logprobs = [-1.0] * len(s.response_ids)
    (c,) = _guide(smol_tokenizer, "refine", teacher)([s], 0)
    assert teacher.seen and c.trajectory is s and c.replace
    context = smol_tokenizer.decode(c.context)
    assert context.index("What is 3 + 4?") < context.index("3 + 4 = 8") < context.index("Wait, 3 + 4 is 7, not 8.")
    assert context.endswith("<|im_start|>assistant\n")
    assert s.guided and s.opinion == "incorrect" and s.sampler_logprobs is None
    assert not s.answer_leak  # cpu-demo's teacher is shown the answer: a mention is no leak
