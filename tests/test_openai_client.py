"""The OpenAI-compatible client: URL and backoff rules by hand, failure handling against real local servers that
misbehave on purpose, and real completions from llama-cpp-python's server."""

from __future__ import annotations

import threading
import time

import pytest

from tests.servers import MisbehavingServer, completion_json, free_port, llama_server
from thinktuning.errors import ConfigError
from thinktuning.openai_client import OpenAIClient, backoff_delay, normalize_base_url

# ----------------------------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(("given", "root"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("https://api.example.org/", "https://api.example.org/v1"),
    ("  http://gpu-box:8000/openai/v1 ", "http://gpu-box:8000/openai/v1"),
])
def test_base_url_is_the_api_root(given, root):
    assert normalize_base_url(given) == root


@pytest.mark.parametrize("bad", ["", "localhost:8000", "127.0.0.1:8000/v1", "ftp://host/v1", "http://", "http://h:x/v1"])
def test_a_bad_base_url_is_a_config_error_that_shows_an_example(bad):
    # neutral: the client does not know which setting the URL came from; the caller adds the name
    with pytest.raises(ConfigError, match=r"^'") as e:  # starts with the URL itself
        normalize_base_url(bad)
    assert "teacher" not in str(e.value)


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after():
    assert [backoff_delay(k, 0.5, 4.0) for k in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(1, 0.5, 4.0, retry_after="3") == 3.0
    assert backoff_delay(1, 0.5, 4.0, retry_after="60") == 4.0  # capped: a step must not stall for a minute
    assert backoff_delay(2, 0.5, 4.0, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") == 1.0  # a date: own schedule


def test_a_missing_key_variable_names_the_variable_and_the_fix(monkeypatch):
    monkeypatch.delenv("TT_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$TT_TEST_NO_SUCH_KEY is not set or empty; export it"):
        OpenAIClient("http://127.0.0.1:1/v1", api_key_env="TT_TEST_NO_SUCH_KEY")


# -------------------------------------------------------------------------------- a server that misbehaves


def _ok(n, body):
    return 200, {}, completion_json(f"echo:{body.get('prompt')}"), 0.0


def _ask_once(behaviour, **client_kwargs):
    """One completion request to a server that answers with ``behaviour``: (the server, the Completion)."""
    with MisbehavingServer(behaviour) as server, OpenAIClient(server.base_url, "m", **client_kwargs) as client:
        (done,) = client.complete(["x"])
    return server, done


def test_the_key_comes_from_the_env_variable_and_goes_out_as_a_bearer_header(monkeypatch):
    monkeypatch.setenv("TT_TEST_KEY", "sk-test-123")
    with MisbehavingServer(_ok) as server, OpenAIClient(server.base_url, "m", api_key_env="TT_TEST_KEY") as client:
        (done,) = client.complete(["hi"], max_tokens=3)
        assert "sk-test-123" not in repr(client)
    assert done.text == "echo:hi" and done.finish_reason == "stop"
    assert (done.prompt_tokens, done.completion_tokens, done.attempts) == (7, 3, 1)
    path, headers, body = server.requests[0]
    assert path == "/v1/completions"
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body == {"model": "m", "prompt": "hi", "max_tokens": 3}


def test_no_key_no_header_and_the_model_name_is_asked_from_the_server():
    with MisbehavingServer(_ok) as server, OpenAIClient(server.base_url) as client:
        client.complete(["a"])
    (_, headers, body), = server.requests
    assert "Authorization" not in headers and body["model"] == "stub-model"


def test_answers_keep_the_order_of_the_requests_and_go_out_concurrently_up_to_the_limit():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_echo(n, body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.3)
        with lock:
            in_flight[0] -= 1
        return _ok(n, body)

    prompts = [f"p{i}" for i in range(6)]
    with MisbehavingServer(slow_echo) as server:
        with OpenAIClient(server.base_url, "m", concurrency=3) as client:
            done = client.complete(prompts)
        assert [d.text for d in done] == [f"echo:{p}" for p in prompts]
        assert peak[0] == 3, f"expected 3 requests in flight at once, saw at most {peak[0]}"
        peak[0] = 0
        with OpenAIClient(server.base_url, "m", concurrency=1) as client:
            client.complete(prompts[:3])
        assert peak[0] == 1


@pytest.mark.parametrize(("payload", "expected"), [
    (b"<html>502 Bad Gateway</html>", "not JSON"),
    (b'{"object": "text_completion", "choices": []}', "no choices[0] text"),
    (b'{"choices": [{"text": null}]}', "text is NoneType"),
    (b'[1, 2, 3]', "no choices[0] text"),
])
def test_garbage_is_an_error_without_retries(payload, expected):
    server, done = _ask_once(lambda n, body: (200, {}, payload, 0.0), max_retries=3, backoff_s=0.01)
    assert done.text is None and not done.ok and done.attempts == 1 and len(server.requests) == 1
    assert done.error.startswith(f"bad answer from {server.base_url}/completions: ") and expected in done.error


def test_5xx_and_429_are_retried_with_backoff_then_succeed():
    def flaky(n, body):
        if n == 1:
            return 503, {"Retry-After": "0"}, b'{"error": "loading model"}', 0.0
        if n == 2:
            return 429, {}, b'{"error": "too many requests"}', 0.0
        return _ok(n, body)

    server, done = _ask_once(flaky, backoff_s=0.01)
    assert done.text == "echo:x" and done.attempts == 3 and len(server.requests) == 3


def test_a_server_that_keeps_failing_gives_up_after_max_retries_with_the_last_reason():
    server, done = _ask_once(lambda n, body: (500, {}, b'{"error": "CUDA out of memory"}', 0.0),
                             max_retries=2, backoff_s=0.01)
    assert len(server.requests) == 3 and done.attempts == 3
    assert done.error == (f'HTTP 500 at {server.base_url}/completions: {{"error": "CUDA out of memory"}} '
                          "(3 attempts)")


@pytest.mark.parametrize(("status", "hint"), [(400, ""), (404, ""), (401, "name the variable that holds it")])
def test_other_4xx_are_not_retried(status, hint):
    server, done = _ask_once(lambda n, body: (status, {}, b'{"error": "nope"}', 0.0), max_retries=3, backoff_s=0.01)
    assert len(server.requests) == 1 and done.attempts == 1
    assert done.error.startswith(f"HTTP {status} at {server.base_url}/completions") and hint in done.error


def _echoing_401(server_ref: list, pad: int = 0):
    """401 with a body that repeats the request's Authorization header, as some gateways do; ``pad`` characters
    before it can place the key across the point where the error text is shortened (160 characters)."""
    def behaviour(n, body):
        auth = server_ref[0].requests[-1][1].get("Authorization", "")
        text = '{"error": "invalid credentials ' + "x" * pad + f' you sent: {auth}"}}'
        return 401, {}, text.encode(), 0.0
    return behaviour


@pytest.mark.parametrize("pad", [0, 95], ids=["whole-key-in-the-body", "key-across-the-cut"])
def test_a_server_echoing_the_key_in_an_error_body_never_carries_it_into_the_error(monkeypatch, pad):
    key = "sk-SECRET-echo-0123456789abcdef"
    monkeypatch.setenv("TT_TEST_KEY", key)
    ref: list = []
    with MisbehavingServer(_echoing_401(ref, pad)) as server:
        ref.append(server)
        with OpenAIClient(server.base_url, "m", api_key_env="TT_TEST_KEY") as client:
            (done,) = client.complete(["x"])
    assert server.requests[0][1]["Authorization"] == f"Bearer {key}"  # the key did go out, as a header
    assert done.error.startswith(f"HTTP 401 at {server.base_url}/completions: ")
    assert "(check the key in $TT_TEST_KEY)" in done.error
    assert key not in done.error and key[:8] not in done.error  # not whole, and no start of it left by a cut
    assert "you sent: Bearer ***" in done.error


def test_a_password_in_the_base_url_is_masked_in_errors_and_repr():
    ref: list = []
    with MisbehavingServer(_echoing_401(ref)) as server:
        ref.append(server)
        url = server.base_url.replace("http://", "http://bob:pw-SECRET-42@")
        with OpenAIClient(url, "m") as client:
            (done,) = client.complete(["x"])
            shown = repr(client)
    assert server.requests[0][1]["Authorization"].startswith("Basic ")  # httpx sends the userinfo as Basic auth
    masked = server.base_url.replace("http://", "http://***@")
    assert done.error.startswith(f"HTTP 401 at {masked}/completions: ") and masked in shown
    for leak in ("pw-SECRET-42", "bob:", server.requests[0][1]["Authorization"].split()[1]):
        assert leak not in done.error and leak not in shown


def test_a_slow_server_times_out_and_is_retried():
    with MisbehavingServer(lambda n, body: (*_ok(n, body)[:3], 1.0)) as server:
        with OpenAIClient(server.base_url, "m", timeout_s=0.2, max_retries=1, backoff_s=0.01) as client:
            (done,) = client.complete(["x"])
        time.sleep(1.0)  # let the handlers finish before the server shuts down
    assert done.error == f"timed out after 0.2s at {server.base_url}/completions (2 attempts)"
    assert len(server.requests) == 2 and done.attempts == 2


def test_nothing_listening_is_connection_refused():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with OpenAIClient(url, "m", max_retries=1, backoff_s=0.01) as client:
        done = client.complete(["x", "y"])
        assert client.models() is None and client.context_window() is None
    assert [d.error for d in done] == [f"connection refused at {url}/completions (2 attempts)"] * 2


# ----------------------------------------------------------------------------------- the real llama.cpp server


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.mark.slow
def test_real_completions_and_chat_from_llama_cpp(llama_url):
    with OpenAIClient(llama_url, concurrency=2, timeout_s=600) as client:
        assert client.served_model() == "smollm2-135m"
        done = client.complete(["The capital of France is", "1, 2, 3, 4,"], max_tokens=8, temperature=0.0)
        (chat,) = client.chat([[{"role": "user", "content": "Say hello."}]], max_tokens=8, temperature=0.0)
        ctx = client.context_window()
    assert all(d.ok and d.text.strip() for d in done), [d.error for d in done]
    assert all(d.finish_reason in ("stop", "length") and d.completion_tokens and d.prompt_tokens for d in done)
    assert "5" in done[1].text  # greedy continuation of a counting sequence
    assert chat.ok and chat.text.strip() and chat.completion_tokens <= 8
    assert ctx is None or ctx == 4096  # llama-cpp-python does not report it; llama.cpp's own server does
