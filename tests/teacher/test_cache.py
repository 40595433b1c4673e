"""Replayable teacher answers (teacher/cache.py): recorded, replayed without a call, keyed by teacher and case."""

from __future__ import annotations

import json

import pytest

from thinktuning.config.load import load_config
from thinktuning.errors import ConfigError
from thinktuning.jsonl import read_jsonl
from thinktuning.teacher.base import TeacherCase, TeacherResult
from thinktuning.teacher.cache import CachedTeacher, case_key, identity, resolve_cache
from thinktuning.teacher.scripted import ScriptedTeacher


class Counting:
    """The real scripted teacher, counting the cases it is asked about (and failing the ones named 'down')."""

    name = "scripted"

    def __init__(self, tokenizer) -> None:
        self.inner = ScriptedTeacher(0, tokenizer=tokenizer, max_feedback_tokens=512)
        self.asked = 0

    def context(self):
        return None

    def feedback(self, cases):
        self.asked += len(cases)
        out = self.inner.feedback([c for c in cases if c.question != "down"])
        return [TeacherResult(None, "", "connection refused") if c.question == "down" else out.pop(0) for c in cases]


CASE = TeacherCase("What is 3 + 4?", "3 + 4 = 8", solution="3 + 4 = 7.", gold_answer="7", student_correct=False)


def test_answers_are_recorded_and_replayed_without_asking(tmp_path, smol_tokenizer):
    cfg = load_config("cpu-scripted")
    first = CachedTeacher(Counting(smol_tokenizer), identity(cfg), tmp_path / "a.jsonl")
    down = TeacherCase("down", "x")
    got = first.feedback([CASE, down])
    assert first.inner.asked == 2 and first.stats["cache_misses"] == 2 and got[0].feedback is not None
    assert got[1].error == "connection refused"
    (rec,) = read_jsonl(tmp_path / "a.jsonl")  # a failed request is not recorded: a replay asks again
    assert rec["key"] == case_key(identity(cfg), CASE)

    replay = CachedTeacher(Counting(smol_tokenizer), identity(cfg), tmp_path / "b.jsonl", [tmp_path / "a.jsonl"])
    again = replay.feedback([CASE])
    assert replay.inner.asked == 0 and replay.stats == {"cache_hits": 1, "cache_misses": 0, "ms": 0}  # no wait
    assert again[0].feedback == got[0].feedback and again[0].raw == got[0].raw
    assert not (tmp_path / "b.jsonl").exists()  # nothing new to record


def test_another_teacher_or_another_case_is_a_miss(tmp_path):
    cfg = load_config("cpu-scripted")
    other = load_config("cpu-scripted", ["teacher.max_feedback_tokens=64"])
    seed = load_config("cpu-scripted", seed=1)
    assert case_key(identity(cfg), CASE) != case_key(identity(other), CASE)
    assert case_key(identity(cfg), CASE) != case_key(identity(seed), CASE)  # scripted wording depends on the seed
    changed = TeacherCase(**{**CASE.__dict__, "response": "3 + 4 = 9"})
    assert case_key(identity(cfg), CASE) != case_key(identity(cfg), changed)
    transport = load_config("cpu-scripted", ["teacher.batch_size=2"])  # how answers are fetched, not what they say
    assert case_key(identity(cfg), CASE) == case_key(identity(transport), CASE)


def test_a_cache_path_must_hold_a_cache(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"no teacher_cache\.jsonl there"):
        resolve_cache(tmp_path / "run")
    (tmp_path / "run" / "teacher_cache.jsonl").write_text(json.dumps({"key": "k"}) + "\n")
    assert resolve_cache(tmp_path / "run") == tmp_path / "run" / "teacher_cache.jsonl"


@pytest.mark.slow
def test_a_replayed_run_calls_no_teacher_and_reproduces_the_guided_rollouts(tmp_path, monkeypatch):
    from tests.train.test_trainer import _comparable, _tiny_cfg, _tiny_student
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve
    from thinktuning.teacher.model import ModelTeacher
    from thinktuning.train.trainer import ThinkTuningTrainer

    student = _tiny_student(tmp_path / "student", load_tokenizer(resolve("smollm2-135m-instruct")))
    first = ThinkTuningTrainer(_tiny_cfg(student, tmp_path / "a", ["save_every=0"])).train()
    assert sum(m["guidance/guided"] for m in first) > 0 and sum(m["teacher/cache_misses"] for m in first) > 0

    def no_call(*args, **kwargs):
        raise AssertionError("the model teacher was called during a replay")

    monkeypatch.setattr(ModelTeacher, "feedback", no_call)
    replay = ThinkTuningTrainer(_tiny_cfg(student, tmp_path / "b", ["save_every=0", f"teacher.cache={tmp_path / 'a'}"]))
    second = replay.train()
    assert sum(m["teacher/cache_misses"] for m in second) == 0
    assert sum(m["teacher/cache_hits"] for m in second) == sum(m["guidance/guided"] + m["guidance/no_feedback"]
                                                               for m in first)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("teacher/")} for m in _comparable(ms)]  # noqa: E731
    assert strip(second) == strip(first)
    assert read_jsonl(tmp_path / "b" / "rollouts.jsonl") == read_jsonl(tmp_path / "a" / "rollouts.jsonl")
