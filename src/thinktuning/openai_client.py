"""A small client for OpenAI-compatible servers (vLLM, llama.cpp, llama-cpp-python, hosted APIs).

Used by the HTTP teacher and meant for any other caller that needs text from a server (e.g. evaluation), so it
knows nothing about teachers: it sends a list of prompts (``/v1/completions``) or conversations
(``/v1/chat/completions``) concurrently and returns one :class:`Completion` per request, in order.

It never raises for a failed request. A training step must go on when the server is down, slow or answers
garbage, so each failure becomes a short ``error`` string that names the cause and the URL (it ends up in a
warning and in rollouts.jsonl). Transient failures (no connection, timeouts, HTTP 5xx and 429) are retried with
exponential backoff; other 4xx answers are the caller's mistake and would fail again, so they are not.

The API key is read from a named environment variable when the client is built and only ever sent as a
``Authorization: Bearer`` header: configs and logs name the variable, never the key. A server may echo the header
back in an error body, so every error string is scrubbed (:class:`~thinktuning.secrets.Scrubber`: the key and any
``user:pass@`` of the URL become ``***``) before it leaves the client.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx

from thinktuning.errors import ConfigError
from thinktuning.secrets import Scrubber, strip_userinfo

__all__ = ["Completion", "OpenAIClient", "backoff_delay", "normalize_base_url"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""Statuses worth another try: overload and gateway errors pass; 4xx like 400/401/404 would fail the same way."""


@dataclass(frozen=True)
class Completion:
    """One request's outcome: ``text`` (with finish reason and token counts when the server reports them), or
    ``text=None`` and a short ``error``. ``attempts`` counts HTTP requests made, retries included."""

    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.text is not None


def normalize_base_url(base_url: str) -> str:
    """The API root without a trailing slash; a bare ``http://host:port`` gets ``/v1`` (the OpenAI convention, and
    where vLLM and llama.cpp serve). Raises ConfigError for anything that is not an http(s) URL with a host; the
    message names no setting, because the caller knows which one it was (``teacher.base_url``, ``--base-url``)."""
    url = (base_url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{strip_userinfo(base_url or '')!r} is not an http(s) URL; give the server's API root, e.g. "
            "http://127.0.0.1:8000/v1"
        )
    try:
        _ = parts.port  # a non-numeric port raises ValueError here
    except ValueError as e:
        raise ConfigError(f"{strip_userinfo(base_url)!r}: {e}") from None
    url = url.rstrip("/")
    return url if parts.path.strip("/") else url + "/v1"


def backoff_delay(attempt: int, base_s: float, cap_s: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): ``base_s * 2**(attempt-1)`` capped at ``cap_s``,
    or the server's ``Retry-After`` seconds (also capped) when it sent one, since it knows when it will be free."""
    if retry_after is not None:
        try:
            return max(0.0, min(float(retry_after), cap_s))
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    return min(base_s * 2 ** (attempt - 1), cap_s)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAIClient:
    """Concurrent requests to one model on an OpenAI-compatible server.

    ``model=None`` asks the server (``GET /models``) and uses the first model it serves, which is what a
    single-model vLLM or llama.cpp server expects. Thread-safe; call :meth:`close` (or use ``with``) when done.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.api_key_env = api_key_env
        headers = {"Content-Type": "application/json"}
        self.scrub = Scrubber().learn(urls=[self.base_url])
        """Masks the key and the URL's userinfo in every error string this client returns."""
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise ConfigError(
                    f"the API key variable ${api_key_env} is not set or empty; export it, or name no key variable "
                    "for a server without a key"
                )
            headers["Authorization"] = f"Bearer {key}"
            self.scrub.secrets.add(key)
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._model_lock = threading.Lock()

    @property
    def display_url(self) -> str:
        """The API root as shown to people: without the ``user:pass@`` of the URL."""
        return self.scrub(self.base_url)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient({self.display_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------ requests

    def complete(self, prompts: list[str], **params: Any) -> list[Completion]:
        """``/completions`` for each prompt (raw text, no chat template applied by the server), concurrently.
        ``params`` go into every request body as they are (``max_tokens``, ``temperature``, ``stop``, ...)."""
        return self._many("completions", [{"prompt": p, **params} for p in prompts])

    def chat(self, conversations: list[list[dict[str, str]]], **params: Any) -> list[Completion]:
        """``/chat/completions`` for each conversation (the server applies its chat template), concurrently."""
        return self._many("chat/completions", [{"messages": m, **params} for m in conversations])

    def _many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Completion]:
        if not bodies:
            return []
        model = self.model or self.served_model()
        if model is not None:
            bodies = [{"model": model, **b} for b in bodies]
        if len(bodies) == 1:
            return [self._one(endpoint, bodies[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(lambda b: self._one(endpoint, b), bodies))

    def _one(self, endpoint: str, body: dict[str, Any]) -> Completion:
        """One request with retries; every failure ends as a scrubbed error string, never an exception."""
        done = self._attempts(endpoint, body)
        if done.error is None:
            return done
        return replace(done, error=self.scrub(done.error))

    def _attempts(self, endpoint: str, body: dict[str, Any]) -> Completion:
        url = f"{self.base_url}/{endpoint}"
        shown = self.display_url + f"/{endpoint}"
        error = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            retry_after = None
            try:
                response = self._client.post(url, json=body)
            except httpx.TimeoutException:
                error = f"timed out after {self.timeout_s:g}s at {shown}"
            except httpx.ConnectError as e:
                error = f"{_connect_reason(self.scrub(str(e)))} at {shown}"
            except httpx.TransportError as e:  # connection dropped mid-answer, protocol error, ...
                error = f"{type(e).__name__} at {shown}: {_short(self.scrub(str(e))) or 'no detail'}"
            except httpx.HTTPError as e:  # not transient (too many redirects, undecodable body): do not retry
                return Completion(None, error=f"{type(e).__name__} at {shown}: {_short(self.scrub(str(e)))}",
                                  attempts=attempt)
            else:
                if response.status_code == 200:
                    return _parse(response, shown, endpoint, attempt, self.scrub)
                # scrubbed before it is shortened: a cut must not leave the start of an echoed key behind
                detail = _short(self.scrub(response.text)) or response.reason_phrase
                error = f"HTTP {response.status_code} at {shown}: {detail}"
                if response.status_code in (401, 403) and self.api_key_env:
                    error += f" (check the key in ${self.api_key_env})"
                elif response.status_code in (401, 403):
                    error += (" (the server wants a key: name the variable that holds it: teacher.api_key_env, or "
                              "--api-key-env for eval)")
                if response.status_code not in RETRY_STATUS:
                    return Completion(None, error=error, attempts=attempt)
                retry_after = response.headers.get("retry-after")
            if attempt <= self.max_retries:
                time.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s, retry_after))
        n = self.max_retries + 1
        return Completion(None, error=f"{error} ({n} attempt{'s' if n > 1 else ''})", attempts=n)

    # ------------------------------------------------------------------------------------------- server info

    def _get_json(self, url: str) -> Any:
        """GET a JSON document, or None on any failure (these lookups are optional conveniences)."""
        try:
            response = self._client.get(url, timeout=min(self.timeout_s, 10.0))
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def models(self) -> list[dict[str, Any]] | None:
        """The server's ``/models`` entries, or None when it cannot be reached or answers something else."""
        data = self._get_json(f"{self.base_url}/models")
        entries = data.get("data") if isinstance(data, dict) else None
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None

    def served_model(self) -> str | None:
        """The model name to send when none was configured: the first one the server lists (cached once found)."""
        with self._model_lock:
            if self.model is None:
                entries = self.models() or []
                ids = [e["id"] for e in entries if isinstance(e.get("id"), str)]
                if ids:
                    self.model = ids[0]
            return self.model

    def context_window(self) -> int | None:
        """The served model's context length in tokens when the server tells it, else None.

        vLLM lists ``max_model_len`` per model; llama.cpp's server reports ``n_ctx`` under ``/props`` (at the
        server root, beside ``/v1``). Other servers (llama-cpp-python, hosted APIs) do not say.
        """
        entries = self.models() or []
        chosen = [e for e in entries if e.get("id") == self.model] or entries[:1]
        for entry in chosen:
            for key in ("max_model_len", "context_length", "n_ctx"):
                if isinstance(entry.get(key), int) and entry[key] > 0:
                    return entry[key]
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        props = self._get_json(f"{root}/props")
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None


def _connect_reason(detail: str) -> str:
    text = detail.lower()
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text or "resolve" in text:
        return "host not found"
    return f"cannot connect ({_short(detail, 80) or 'no detail'})"


def _parse(response: httpx.Response, url: str, endpoint: str, attempt: int, scrub: Scrubber) -> Completion:
    """Read an OpenAI-shaped answer; anything else is a short 'bad answer' error (not retried: it would repeat).
    Quoted bodies are scrubbed before they are shortened."""
    try:
        data = response.json()
    except ValueError:
        return Completion(None, error=f"bad answer from {url}: not JSON ({_short(scrub(response.text), 60)!r})",
                          attempts=attempt)
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if endpoint.startswith("chat") else choice["text"]
    except (KeyError, IndexError, TypeError):
        return Completion(None, error=f"bad answer from {url}: no choices[0] text in {_short(scrub(str(data)), 80)!r}",
                          attempts=attempt)
    if not isinstance(text, str):
        return Completion(None, error=f"bad answer from {url}: text is {type(text).__name__}", attempts=attempt)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    as_int = lambda v: v if isinstance(v, int) else None  # noqa: E731
    return Completion(text, choice.get("finish_reason"), as_int(usage.get("prompt_tokens")),
                      as_int(usage.get("completion_tokens")), attempts=attempt)
