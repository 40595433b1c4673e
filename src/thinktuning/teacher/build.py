"""Choose and construct the teacher backend named by ``teacher.backend``.

One place per backend, so adding one (a server, a scripted instrument) touches this file and the backend's own
module, never the trainer.
"""

from __future__ import annotations

from thinktuning.config import ThinkTuningConfig
from thinktuning.teacher.base import Teacher


def build_teacher(cfg: ThinkTuningConfig, *, tokenizer, frozen_student, device) -> Teacher:
    """The run's teacher. ``frozen_student`` is the frozen initial student (loaded by the trainer when
    ``teacher.model`` is ``student-init``), ``tokenizer`` the student's (the spliced feedback is re-tokenized
    with it either way)."""
    t = cfg.teacher
    if t.backend == "model":
        from thinktuning.models import load_model, load_tokenizer, resolve
        from thinktuning.teacher.model import ModelTeacher

        if t.model == "student-init":
            t_model, t_tok = frozen_student, tokenizer
        else:
            spec = resolve(t.model, cfg.model.cache_dir)
            t_tok = load_tokenizer(spec, cfg.model.trust_remote_code)
            t_model = load_model(spec, cfg.model.dtype, cfg.model.trust_remote_code).to(device)
        return ModelTeacher(
            t_model, t_tok, max_reason_tokens=t.max_reason_tokens, max_phrase_tokens=t.max_phrase_tokens,
            repetition_penalty=t.repetition_penalty, close_with_answer=t.close_with_answer, batch_size=t.batch_size,
        )
    raise AssertionError(f"unhandled teacher.backend {t.backend!r}")  # validate() lists the allowed values


def needs_frozen_student(cfg: ThinkTuningConfig) -> bool:
    """Whether the teacher is a frozen copy of the initial student held in this process."""
    return cfg.guidance.enabled and cfg.teacher.backend == "model" and cfg.teacher.model == "student-init"
