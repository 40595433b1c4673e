"""``thinktuning eval --backend openai``: a real eval through a real llama.cpp server serving the embedded model,
and what happens when requests fail (recorded as wrong, evaluation completes)."""

from __future__ import annotations

import json

import pytest

from tests.servers import MisbehavingServer, llama_server
from thinktuning.cli import main
from thinktuning.errors import ConfigError
from thinktuning.eval.settings import EvalSettings

pytestmark = pytest.mark.slow


def _chat_json(text: str, finish: str = "stop", tokens: int = 5) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": tokens}}).encode()


def test_eval_through_a_real_llama_cpp_server(tmp_path):
    out = tmp_path / "res.json"
    with llama_server(tmp_path) as url:
        code = main(["eval", "--model", "smollm2-135m", "--backend", "openai", "--base-url", url,
                     "--benchmarks", "arithmetic", "--limit", "3", "--max-new-tokens", "24", "--concurrency", "3",
                     "--output", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    bench = res["benchmarks"]["arithmetic"]
    assert res["backend"] == "openai" and res["model"]["server"] == url
    assert len(bench["items"]) == 3
    for item in bench["items"]:
        (resp,) = item["samples"]
        # real text from the model, with the server's own token count, never above the limit
        assert resp["response"].strip() and 0 < resp["tokens"] <= 24


def test_failed_requests_are_scored_wrong_and_the_eval_completes(tmp_path, caplog):
    def behaviour(i, body):
        if i <= 2:  # the first two requests: a permanent error (4xx is not retried)
            return 400, {}, b'{"error": "bad request"}', 0.0
        return 200, {}, _chat_json("The sum is \\boxed{999}."), 0.0

    out = tmp_path / "res.json"
    with MisbehavingServer(behaviour) as server:
        code = main(["eval", "--model", "m", "--backend", "openai", "--base-url", server.base_url,
                     "--benchmarks", "arithmetic", "--limit", "6", "--output", str(out)])
    assert code == 0
    items = json.loads(out.read_text())["benchmarks"]["arithmetic"]["items"]
    assert len(items) == 6
    texts = [it["samples"][0]["response"] for it in items]
    assert sorted(texts) == ["", ""] + ["The sum is \\boxed{999}."] * 4
    assert len(server.requests) == 6  # no retries of a 400
    assert sum("a generation request failed" in r.getMessage() for r in caplog.records) == 2
    # every request carried the requested model name and greedy settings
    assert all(body["model"] == "m" and body["temperature"] == 0.0 for _, _, body in server.requests)


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ConfigError, match="needs --base-url"):
        EvalSettings(backend="openai").check()
    with pytest.raises(ConfigError, match="is for --backend openai"):
        EvalSettings(base_url="http://x:1/v1").check()
