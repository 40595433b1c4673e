"""The HTTP teacher: its text rules by hand, real feedback from llama.cpp serving the embedded SmolLM2, guided
training steps through it, and training that goes on (counted, warned about once) when the server is down, slow
or answers garbage."""

from __future__ import annotations

import logging
import math

import pytest

from tests.servers import MisbehavingServer, completion_json, free_port, llama_server
from tests.train.test_trainer import _tiny_cfg, _tiny_student
from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.cli import main
from thinktuning.errors import ConfigError
from thinktuning.jsonl import read_jsonl
from thinktuning.openai_client import OpenAIClient
from thinktuning.teacher.base import TeacherCase
from thinktuning.teacher.http import HTTPTeacher, _close_last_phrase, close_phrase, own_answer
from thinktuning.teacher.prompt import render_tags as render

# ------------------------------------------------------------------------------------------- text rules


def test_closing_rules_match_the_in_process_teacher():
    assert close_phrase("So it is 5.", "5") == "So it is 5. The final answer is \\boxed{5}."
    assert close_phrase("", "5") == "The final answer is \\boxed{5}."
    assert own_answer(" 42}. Done") == "42"
    assert own_answer("}") is None and own_answer("\\frac{1") is None  # empty, or an unclosed nested brace
    assert render("correct", "r", "p") == "<opinion>correct</opinion>\n<reason>r</reason>\n<phrase>p</phrase>"


def test_a_chat_answer_whose_phrase_lacks_an_answer_is_closed_with_the_reference():
    text = "<opinion>incorrect</opinion>\n<reason>I added wrong.</reason>\n<phrase>Redo: 2 + 3 = 5.</phrase> bye"
    closed = "<opinion>incorrect</opinion>\n<reason>I added wrong.</reason>\n" \
             "<phrase>Redo: 2 + 3 = 5. The final answer is \\boxed{5}.</phrase>"
    assert _close_last_phrase(text, "5") == closed
    assert _close_last_phrase(text.replace("</phrase> bye", ""), "5") == closed  # cut off before </phrase>
    assert _close_last_phrase("<opinion>correct</opinion>", "5") is None


def test_the_completions_api_needs_a_tokenizer():
    with pytest.raises(ValueError, match="needs the teacher's tokenizer"):
        HTTPTeacher(OpenAIClient("http://127.0.0.1:1/v1", "m"), api="completions", tokenizer=None)


# --------------------------------------------------------------------------------- config and start-up errors


@pytest.mark.parametrize(("base_url", "message"), [
    (None, "teacher.backend=http needs teacher.base_url"),
    ("localhost:8000/v1", "teacher.base_url='localhost:8000/v1' is not an http(s) URL"),
])
def test_bad_base_url_is_one_clear_line(tmp_path, capsys, base_url, message):
    args = ["train", "--output-dir", str(tmp_path / "run"), "--set", "teacher.backend=http"]
    if base_url:
        args += ["--set", f"teacher.base_url={base_url}"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")


def test_the_http_fields_are_validated():
    base = ["teacher.backend=http", "teacher.base_url=http://127.0.0.1:8000/v1"]
    for bad, field in [("teacher.concurrency=0", "concurrency"), ("teacher.timeout_s=0", "timeout_s"),
                       ("teacher.max_retries=-1", "max_retries"), ("teacher.api=rest", "teacher.api")]:
        with pytest.raises(ConfigError, match=field):
            load_config("cpu-demo", [*base, bad])
    assert load_config("cpu-demo", base).teacher.api == "completions"
    with pytest.raises(ConfigError, match="not the key itself; got a value of 12 characters") as info:
        load_config("cpu-demo", [*base, "teacher.api_key_env=sk-abc123456"])  # a pasted key is refused, not echoed
    assert "sk-abc" not in str(info.value)
    assert load_config("cpu-demo", [*base, "teacher.api_key_env=VLLM_API_KEY"]).teacher.api_key_env == "VLLM_API_KEY"


# --------------------------------------------------------------------------------- the real llama.cpp server


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


CASES = [
    TeacherCase("What is 7 + 5?", "7 + 5 = 13. The answer is \\boxed{13}.", "12", "answer", "12"),
    TeacherCase("What is 9 - 4?", "9 - 4 = 5. The answer is \\boxed{5}."),
]


@pytest.mark.slow
def test_real_feedback_through_the_completions_api(llama_url, smol_tokenizer):
    with OpenAIClient(llama_url, concurrency=2, timeout_s=600) as client:  # a busy 2-core CI reads 1k tokens slowly
        teacher = HTTPTeacher(client, tokenizer=smol_tokenizer, max_reason_tokens=24, max_phrase_tokens=24)
        ctx = teacher.context()
        results = teacher.feedback(CASES)
    assert ctx is not None and ctx[1] > 500  # instructions + 4 demonstrations, counted with the tokenizer
    assert len(results) == 2
    for r in results:
        assert r.feedback is not None, (r.error, r.raw)
        assert r.feedback.opinion in ("correct", "incorrect") and r.feedback.reason
        assert r.raw.startswith(f"<opinion>{r.feedback.opinion}</opinion>\n<reason>")
    # the first case may see its reference: a phrase without an answer is closed with it
    assert results[0].feedback.phrase.endswith("}.") and "\\boxed{" in results[0].feedback.phrase
    # 3 stages (+ at most one closing request) per case, nothing retried
    assert 6 <= teacher.stats["requests"] <= 8 and teacher.stats["retries"] == 0 == teacher.stats["failed_requests"]
    # llama.cpp reports usage: every stage's prompt (the ~500-token instructions each time) and what it wrote
    assert teacher.stats["usage_missing"] == 0
    assert teacher.stats["tokens_in"] > 6 * 500 and 0 < teacher.stats["tokens_out"] <= 8 * 32


@pytest.mark.slow
def test_real_answers_through_the_chat_api(llama_url):
    with OpenAIClient(llama_url, timeout_s=600) as client:
        teacher = HTTPTeacher(client, api="chat", max_reason_tokens=32, max_phrase_tokens=32)
        assert teacher.context() is None  # the server's own template: nothing to count here
        results = teacher.feedback(CASES)
    assert teacher.stats["failed_requests"] == 0 and len(results) == 2
    for r in results:
        assert r.raw.strip(), "the server answered nothing"
        # a 135M model rarely writes the tags unforced; whatever it wrote went through the one parser
        assert (r.feedback is None) == (r.error is not None)


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory, smol_tokenizer):
    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), smol_tokenizer)


def _http_cfg(student, run, base_url, extra=(), steps=2):
    cfg = _tiny_cfg(student, run, ["teacher.backend=http", f"teacher.base_url={base_url}", "teacher.max_retries=1",
                                   *extra])
    cfg.max_steps = steps
    return cfg


@pytest.mark.slow
def test_two_guided_steps_with_the_server_then_two_with_it_stopped(tmp_path, tiny_student, caplog):
    with llama_server(tmp_path) as url:
        trainer = ThinkTuningTrainer(_http_cfg(tiny_student, tmp_path / "up", url, ["teacher.timeout_s=600"]))
        assert trainer.teacher.name == "http"
        up = trainer.train()
    assert len(up) == 2 and all(math.isfinite(m["loss"]) for m in up)
    assert sum(m["guidance/guided"] for m in up) > 0
    guided = [r for r in read_jsonl(tmp_path / "up" / "rollouts.jsonl") if r["guided"]]
    assert guided and all(r["teacher_error"] is None and r["opinion"] in ("correct", "incorrect") for r in guided)
    assert trainer.teacher.stats["failed_requests"] == 0
    # each step logs the requests it made: together, all the requests of the run
    assert sum(m["teacher/requests"] for m in up) == trainer.teacher.stats["requests"] > 0
    assert all(m["teacher/failed_requests"] == 0 for m in up)
    assert sum(m["teacher/tokens_out"] for m in up) == trainer.teacher.stats["tokens_out"] > 0

    # the same run with the server stopped: nothing guided, every asked rollout counted, the run completes
    with caplog.at_level(logging.WARNING):
        down = ThinkTuningTrainer(_http_cfg(tiny_student, tmp_path / "down", url)).train()
    assert len(down) == 2 and all(math.isfinite(m["loss"]) for m in down)
    assert all(m["guidance/guided"] == 0 and m["guidance/no_feedback"] > 0 for m in down)
    asked = [r for r in read_jsonl(tmp_path / "down" / "rollouts.jsonl") if r["no_feedback"]]
    assert asked and all(r["teacher_error"] == f"connection refused at {url}/completions (2 attempts)" for r in asked)
    assert f"the teacher server at {url} does not answer" in caplog.text
    asked_per_step = [sum(1 for r in asked if r["step"] == m["step"]) for m in down]
    assert [m["teacher/failed_requests"] for m in down] == asked_per_step
    assert [m["teacher/retries"] for m in down] == asked_per_step  # teacher.max_retries=1: one retry each


def _garbage(n, body):
    return 200, {}, b"<html>upstream is sleeping</html>", 0.0


@pytest.mark.slow
def test_garbage_slow_and_failing_servers_leave_rollouts_unguided_and_warn_once(tmp_path, tiny_student, caplog):
    for name, behaviour, extra, error in [
        ("garbage", _garbage, [], "bad answer from {url}/completions: not JSON ('<html>upstream is sleeping</html>')"),
        ("slow", lambda n, body: (200, {}, completion_json("correct"), 1.0), ["teacher.timeout_s=0.2"],
         "timed out after 0.2s at {url}/completions (2 attempts)"),
        ("failing", lambda n, body: (503, {"Retry-After": "0"}, b'{"error": "overloaded"}', 0.0), [],
         'HTTP 503 at {url}/completions: {{"error": "overloaded"}} (2 attempts)'),
    ]:
        caplog.clear()
        with MisbehavingServer(behaviour) as server:
            trainer = ThinkTuningTrainer(_http_cfg(tiny_student, tmp_path / name, server.base_url, extra))
            trainer.guide.watch.silent_steps = 2
            with caplog.at_level(logging.WARNING, logger="thinktuning.train.trainer"):
                history = trainer.train()
        expected = error.format(url=server.base_url)
        assert all(m["guidance/guided"] == 0 and m["guidance/no_feedback"] > 0 for m in history), name
        assert all(math.isfinite(m["loss"]) for m in history), name
        asked = [r for r in read_jsonl(tmp_path / name / "rollouts.jsonl") if r["no_feedback"]]
        assert asked and all(r["teacher_error"] == expected for r in asked), (name, asked[0]["teacher_error"])
        retries = 0 if name == "garbage" else 1  # garbage would repeat itself: not retried
        assert len(server.requests) == sum(m["guidance/no_feedback"] for m in history) * (1 + retries), name
        broken = [r.getMessage() for r in caplog.records if "seems broken" in r.getMessage()]
        assert len(broken) == 1 and expected in broken[0], (name, broken)


def test_a_missing_key_variable_stops_the_run_at_start(tmp_path, tiny_student, monkeypatch):
    monkeypatch.delenv("TT_TEST_TEACHER_KEY", raising=False)
    cfg = _http_cfg(tiny_student, tmp_path / "run", f"http://127.0.0.1:{free_port()}/v1",
                    ["teacher.api_key_env=TT_TEST_TEACHER_KEY"])
    with pytest.raises(ConfigError, match=r"\$TT_TEST_TEACHER_KEY"):
        ThinkTuningTrainer(cfg)
