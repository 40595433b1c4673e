"""Choose and construct the teacher backend named by ``teacher.backend``.

One place per backend, so adding one (a server, a scripted instrument) touches this file and the backend's own
module, never the trainer.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.models import lora
from thinktuning.models.load import load_model, load_tokenizer
from thinktuning.models.resolve import resolve
from thinktuning.teacher.base import Teacher
from thinktuning.teacher.cache import CACHE_NAME, CachedTeacher, identity, resolve_cache


def build_teacher(cfg: ThinkTuningConfig, *, tokenizer, frozen_student, device, frozen_context=None,
                  dtype: str = "float32") -> Teacher:
    """The run's teacher. ``frozen_student`` is the frozen initial student (loaded by the trainer when
    ``teacher.model`` is ``student-init``), ``tokenizer`` the student's (the spliced feedback is re-tokenized
    with it either way). With LoRA, ``frozen_student`` is the trained model itself and ``frozen_context`` the
    context under which it is the initial student (adapters off). ``dtype``: the run's compute precision (the
    teacher is frozen, so its weights are simply held in it)."""
    t = cfg.teacher
    if t.backend == "model":
        from thinktuning.teacher.model import ModelTeacher

        if t.model == "student-init":
            t_model, t_tok = frozen_student, tokenizer
        else:
            spec = resolve(t.model, cfg.model.cache_dir)
            t_tok = load_tokenizer(spec, cfg.model.trust_remote_code)
            t_model = load_model(spec, dtype, cfg.model.trust_remote_code).to(device)
        return ModelTeacher(
            t_model, t_tok, max_reason_tokens=t.max_reason_tokens, max_phrase_tokens=t.max_phrase_tokens,
            repetition_penalty=t.repetition_penalty, close_with_answer=t.close_with_answer, batch_size=t.batch_size,
            forward_context=frozen_context if t.model == "student-init" else None,
        )
    if t.backend == "http":
        from thinktuning.openai_client import OpenAIClient
        from thinktuning.teacher.http import HTTPTeacher

        t_tok = None
        if t.api == "completions":  # we render the chat template: the served model's tokenizer (student's by default)
            t_tok = tokenizer if t.model == "student-init" else load_tokenizer(
                resolve(t.model, cfg.model.cache_dir), cfg.model.trust_remote_code)
        try:
            client = OpenAIClient(t.base_url, t.server_model, api_key_env=t.api_key_env,
                                  concurrency=t.concurrency, timeout_s=t.timeout_s, max_retries=t.max_retries)
        except ConfigError as e:
            raise ConfigError(f"teacher (backend http, api_key_env={t.api_key_env}): {e}") from None
        return HTTPTeacher(
            client, api=t.api, tokenizer=t_tok, max_reason_tokens=t.max_reason_tokens,
            max_phrase_tokens=t.max_phrase_tokens, repetition_penalty=t.repetition_penalty,
            close_with_answer=t.close_with_answer,
        )
    if t.backend == "scripted":  # a research instrument: templates over the task's worked steps, no model
        from thinktuning.teacher.scripted import ScriptedTeacher

        return ScriptedTeacher(cfg.seed, tokenizer=tokenizer, max_feedback_tokens=t.max_feedback_tokens)
    raise AssertionError(f"unhandled teacher.backend {t.backend!r}")  # validate() lists the allowed values


def needs_frozen_student(cfg: ThinkTuningConfig) -> bool:
    """Whether the teacher is a frozen copy of the initial student held in this process. Not with LoRA: the
    student's base weights never change, so the student with its adapters off is that copy already."""
    return (cfg.guidance.asks_teacher() and cfg.teacher.backend == "model" and cfg.teacher.model == "student-init"
            and not cfg.lora.enabled)


def build_teacher_and_reference(cfg: ThinkTuningConfig, student, student_spec, tokenizer, device, rank: int = 0,
                                dtype: str = "float32"):
    """``(teacher, reference, frozen_view)``: the teacher (a frozen copy of the initial student by default), the
    frozen KL reference only when KL is on (the same frozen copy: loaded once), and the context that runs the frozen
    copy. With LoRA the frozen initial student is ``student`` itself under ``adapters_off``: no second copy. The
    frozen copy is held in ``dtype``, the run's compute precision."""
    frozen, frozen_view = None, contextlib.nullcontext
    if cfg.lora.enabled:
        frozen, frozen_view = student, functools.partial(lora.adapters_off, student)
    elif needs_frozen_student(cfg) or cfg.loss.kl_coef > 0:
        frozen = load_model(student_spec, dtype, cfg.model.trust_remote_code)
        frozen.requires_grad_(False).eval().to(device)
    teacher = None
    if cfg.guidance.asks_teacher():
        teacher = build_teacher(cfg, tokenizer=tokenizer, frozen_student=frozen, device=device,
                                frozen_context=frozen_view if cfg.lora.enabled else None, dtype=dtype)
        # every answer recorded in the run folder (one file per process), replayed from teacher.cache when given
        record = Path(cfg.output_dir) / (CACHE_NAME if rank == 0 else f"teacher_cache.rank{rank}.jsonl")
        replay = [resolve_cache(cfg.teacher.cache)] if cfg.teacher.cache else []
        teacher = CachedTeacher(teacher, identity(cfg), record, replay)
    return teacher, (frozen if cfg.loss.kl_coef > 0 else None), frozen_view
