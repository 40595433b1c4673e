"""``thinktuning eval --backend openai``: generate through any OpenAI-compatible server (vLLM, llama.cpp, SGLang...).

The model then lives on the server, so ``--model`` is only the name sent in requests (``--server-model`` overrides
it; ``auto`` asks the server for the first model it serves). Prompts go to ``/chat/completions`` as one user
turn, so the server applies the model's own chat template, as the trainer does locally; requests run concurrently
(``--concurrency``) with the retries and timeouts of :class:`~thinktuning.openai_client.OpenAIClient`. A request
that still fails is recorded as an empty, unfinished response (scored wrong, counted as truncated) and named in
the log, so one bad request does not throw away a long evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from thinktuning.openai_client import Completion, OpenAIClient

log = logging.getLogger(__name__)


class OpenAIGenerator:
    """The evaluation :class:`~thinktuning.evaluate.Generator` protocol over an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, client: OpenAIClient, *, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.seed = seed
        self.progress = progress
        self.failed = 0
        """Requests that failed after their retries (their responses are empty and scored wrong)."""

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool):
        from thinktuning.evaluate import Generation

        conversations = [[{"role": "user", "content": p}] for p in prompts]
        params: dict = {"max_tokens": max_new_tokens}
        if greedy:
            params["temperature"] = 0.0
        else:
            params.update(temperature=temperature, top_p=top_p)
        out: list[list[Generation]] = [[] for _ in prompts]
        # one request per sample with its own seed: n > 1 in one request is not supported by every server
        for k in range(n):
            for i, c in enumerate(self.client.chat(conversations, seed=self.seed + k, **params)):
                out[i].append(self._generation(c))
            if self.progress is not None:
                self.progress(f"sample {k + 1}/{n} of {len(prompts)} prompts")
        return out

    def _generation(self, c: Completion):
        from thinktuning.evaluate import Generation

        if not c.ok:
            self.failed += 1
            log.warning("a generation request failed (scored wrong): %s", c.error)
            return Generation("", 0, False)
        tokens = c.completion_tokens if c.completion_tokens is not None else len(c.text.split())
        return Generation(c.text, tokens, c.finish_reason == "stop")

    def close(self) -> None:
        self.client.close()
