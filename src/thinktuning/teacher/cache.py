"""Replayable teacher answers: every answer is recorded in the run folder, and another run can replay them.

Why: the teacher is the expensive and, for a server or a large model, the least reproducible part of a step. A run
that differs only downstream of the teacher (another seed of a later phase, a resumed run, a re-run for a figure)
can reuse exactly the feedback the first run got, and says how many answers came from the cache
(``teacher/cache_hits`` and ``teacher/cache_misses`` in ``metrics.jsonl``). An answer is keyed by the teacher's
identity (every setting that shapes its output) and the whole case it was shown, so a hit is the answer the teacher
would give again. Failed requests are not recorded: a replay asks again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.jsonl import read_jsonl
from thinktuning.teacher.base import Teacher, TeacherCase, TeacherResult
from thinktuning.teacher.prompt import Feedback

CACHE_NAME = "teacher_cache.jsonl"

_TRANSPORT = ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries", "batch_size", "cache")
"""Teacher settings that change how answers are fetched, not what they say."""


def identity(cfg: ThinkTuningConfig) -> dict[str, Any]:
    """The settings that decide a teacher's answer: its section minus transport, plus the student when the teacher
    is a copy of it, and the seed for the scripted teacher (its wording is drawn from it)."""
    out: dict[str, Any] = {k: v for k, v in asdict(cfg.teacher).items() if k not in _TRANSPORT}
    if cfg.teacher.model == "student-init":
        out["student"] = cfg.model.student
    if cfg.teacher.backend == "scripted":
        out["seed"] = cfg.seed
    out["continuation"] = cfg.guidance.continuation
    return out


def case_key(teacher: dict[str, Any], case: TeacherCase) -> str:
    """A stable key for (teacher identity, case): sha256 of their canonical JSON."""
    text = json.dumps({"teacher": teacher, "case": asdict(case)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_cache(path: str | Path) -> Path:
    """A cache file, or the run folder holding one; a clear error for anything else."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CACHE_NAME
    if not p.is_file():
        raise ConfigError(f"teacher.cache={path}: no {CACHE_NAME} there; give a run folder that used a teacher, "
                          "or its teacher_cache.jsonl")
    return p


class CachedTeacher:
    """A :class:`~thinktuning.teacher.base.Teacher` that answers from recorded answers when it can and asks
    ``inner`` otherwise, recording every new answer in ``record``."""

    def __init__(self, inner: Teacher, teacher_identity: dict[str, Any], record: Path | None,
                 replay: list[Path] | None = None) -> None:
        self.inner, self.name, self.identity, self.record = inner, inner.name, teacher_identity, record
        self.answers: dict[str, dict[str, Any]] = {}
        for path in [*(replay or []), *([record] if record is not None and record.is_file() else [])]:
            for rec in read_jsonl(path, "skip"):  # a line cut by a crash is only a lost answer
                if isinstance(rec.get("key"), str):
                    self.answers[rec["key"]] = rec
        self.hits = self.misses = 0
        self.ms = 0
        """Milliseconds spent waiting for the backend (cache hits cost none): per step, ``teacher/ms``."""

    @property
    def stats(self) -> dict[str, int]:
        return {**(getattr(self.inner, "stats", None) or {}), "cache_hits": self.hits, "cache_misses": self.misses,
                "ms": self.ms}

    def context(self) -> tuple[int | None, int] | None:
        return self.inner.context()

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        keys = [case_key(self.identity, c) for c in cases]
        results: list[TeacherResult | None] = [self._replay(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        self.hits += len(cases) - len(todo)
        self.misses += len(todo)
        if todo:
            t0 = time.perf_counter()
            fresh = self.inner.feedback([cases[i] for i in todo])
            self.ms += round((time.perf_counter() - t0) * 1000)
            if len(fresh) != len(todo):
                raise RuntimeError(f"teacher backend {self.name!r} returned {len(fresh)} results for {len(todo)} "
                                   "requests")
            for i, res in zip(todo, fresh, strict=True):
                results[i] = res
                if res.error is None:
                    self._store(keys[i], res)
        return results  # type: ignore[return-value]

    def _replay(self, key: str) -> TeacherResult | None:
        rec = self.answers.get(key)
        if rec is None:
            return None
        fb = rec.get("feedback")
        return TeacherResult(Feedback(**fb) if isinstance(fb, dict) else None, rec.get("raw", ""), None)

    def _store(self, key: str, res: TeacherResult) -> None:
        rec = {"key": key, "raw": res.raw, "feedback": asdict(res.feedback) if res.feedback is not None else None}
        self.answers[key] = rec
        if self.record is not None:
            with self.record.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
