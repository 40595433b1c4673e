"""The teacher as a model behind an OpenAI-compatible server (a vLLM server on other GPUs, llama.cpp on a laptop).

Two ways to ask, chosen by ``teacher.api``:

``completions`` (default)
    We render the chat prompt ourselves with the teacher's tokenizer and write every tag, as the in-process
    :class:`~thinktuning.teacher.model.ModelTeacher` does, so a small teacher cannot lose the format: the prompt
    ends with ``<opinion>`` and the server writes the opinion (stopped at ``</opinion>``); we append
    ``</opinion>\\n<reason>`` and it writes the reason (stopped at ``</reason>``); we append ``</reason>\\n<phrase>``
    and it writes the phrase (stopped at ``</phrase>``). Three short requests per case instead of one long free
    answer cost little, because the server reuses the cached prompt prefix. The same model served this way gives
    the same greedy feedback as in-process (up to the server's numerics).
``chat``
    One request with the chat messages; the server applies its own template and the answer is parsed as it is.
    No tokenizer is needed here, so this suits hosted or large chat models that follow the format on their own.

Either way the text goes through :func:`~thinktuning.teacher.prompt.parse_feedback`, so "no feedback" is decided
in one place, and ``close_with_answer`` gives a phrase without ``\\boxed{}`` a final answer: the reference's when
the teacher may see it, else (completions only) the teacher's own completion of "The final answer is \\boxed{".

The requests of one step go out concurrently (``teacher.concurrency``), stage by stage. A request that fails after
its retries (server down, slow, HTTP errors, garbage) leaves its rollout unguided with a short reason in
``error``; it never raises, so training goes on and the trainer's TeacherWatch warns if this lasts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from thinktuning.openai_client import Completion, OpenAIClient
from thinktuning.teacher.base import TeacherCase, TeacherResult
from thinktuning.teacher.prompt import (
    CLOSING,
    OPINIONS,
    build_messages,
    chat_prefix,
    has_final_answer,
    parse_feedback,
    render_tags,
)

log = logging.getLogger(__name__)

OPINION_TOKENS = 4
"""Room for the opinion word ("incorrect" is 1-3 tokens in common vocabularies)."""
ANSWER_TOKENS = 24
"""Room for the teacher's own final answer inside ``\\boxed{`` (as ModelTeacher allows)."""


def close_phrase(phrase: str, answer: str) -> str:
    """``phrase`` followed by "The final answer is \\boxed{answer}." (what ModelTeacher writes)."""
    sep = " " if phrase else ""
    return f"{phrase}{sep}{CLOSING}{answer}}}."


def own_answer(completion_text: str) -> str | None:
    """The answer the teacher wrote after "\\boxed{" (server stopped at "}"), or None when empty or nested."""
    answer = completion_text.split("}")[0].strip()
    return answer if answer and "{" not in answer else None


@dataclass
class _Case:
    """One case's progress through the stages; ``error`` set means it has dropped out."""

    case: TeacherCase
    prompt: str = ""
    opinion: str = ""
    reason: str = ""
    phrase: str = ""
    error: str | None = None
    raw: list[str] = field(default_factory=list)


class HTTPTeacher:
    """Feedback from a model served over an OpenAI-compatible API (see the module docstring)."""

    name = "http"

    def __init__(
        self,
        client: OpenAIClient,
        *,
        api: str = "completions",
        tokenizer=None,
        max_reason_tokens: int = 256,
        max_phrase_tokens: int = 256,
        repetition_penalty: float = 1.0,
        close_with_answer: bool = True,
    ) -> None:
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if api == "completions" and tokenizer is None:
            raise ValueError("the completions API needs the teacher's tokenizer to render its chat template")
        self.client = client
        self.api = api
        self.tokenizer = tokenizer
        self.max_reason_tokens = max_reason_tokens
        self.max_phrase_tokens = max_phrase_tokens
        self.close_with_answer = close_with_answer
        self.sampling: dict = {"temperature": 0.0}  # greedy, as the in-process teacher
        if repetition_penalty != 1.0:  # vLLM's and llama.cpp's names; plain OpenAI has neither, so only when asked
            self.sampling.update(repetition_penalty=repetition_penalty, repeat_penalty=repetition_penalty)
        self.stats = {"requests": 0, "retries": 0, "failed_requests": 0, "tokens_in": 0, "tokens_out": 0,
                      "usage_missing": 0}
        """Totals since start: HTTP requests made (retries included), retries, requests that failed for good, and
        the prompt and completion tokens the server reported (``usage``); answers without a usage block are counted
        in ``usage_missing`` (their tokens are not in the totals)."""

    def context(self) -> tuple[int | None, int] | None:
        """(the server's context window if it says, tokens of the instructions + demonstrations) for the start-up
        length check. Also the moment to tell the user, once, that the server does not answer yet: the run still
        starts (its rollouts stay unguided until the server is up)."""
        if self.client.models() is None:
            log.warning(
                "the teacher server at %s does not answer GET /models now; the run goes on, and rollouts it is "
                "asked about stay unguided (counted in guidance/no_feedback) until it answers", self.client.display_url,
            )
            return None
        if self.api == "chat":
            return None  # the server's own template and tokenizer: it refuses an over-long request itself (counted)
        prefix = chat_prefix(self.tokenizer, build_messages("", ""))
        return self.client.context_window(), len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        if not cases:
            return []
        return self._chat(cases) if self.api == "chat" else self._completions(cases)

    # ------------------------------------------------------------------------------------------ plumbing

    def _count(self, done: list[Completion]) -> list[Completion]:
        for c in done:
            self.stats["requests"] += c.attempts
            self.stats["retries"] += c.attempts - 1
            self.stats["failed_requests"] += not c.ok
            if c.ok:
                if c.prompt_tokens is None or c.completion_tokens is None:
                    self.stats["usage_missing"] += 1
                self.stats["tokens_in"] += c.prompt_tokens or 0
                self.stats["tokens_out"] += c.completion_tokens or 0
        return done

    def _stage(self, live: list[_Case], extend: str, stop: str, max_tokens: int) -> list[str | None]:
        """Append ``extend`` to each live case's prompt, ask the server to continue up to ``stop``, and return the
        text before ``stop`` (None for a case whose request failed: it gets the error and drops out). The caller
        appends what the next stage should build on (the cleaned field, as ModelTeacher feeds its own tokens)."""
        for c in live:
            c.prompt += extend
            c.raw.append(extend)
        done = self._count(self.client.complete(
            [c.prompt for c in live], max_tokens=max_tokens, stop=[stop], **self.sampling,
        ))
        out: list[str | None] = []
        for c, d in zip(live, done, strict=True):
            if d.text is None:
                c.error = d.error
                out.append(None)
            else:
                text = d.text.split(stop)[0]  # servers drop the stop string; some keep it
                c.raw.append(text)
                out.append(text)
        return out

    def _completions(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        states = [_Case(c, chat_prefix(self.tokenizer, build_messages(
            c.question, c.response, c.reference, c.reference_kind))) for c in cases]

        live = states
        for c, text in zip(live, self._stage(live, "<opinion>", "</opinion>", OPINION_TOKENS), strict=True):
            if text is not None:  # the word before any tag: a 4-token limit can cut "</opinion>" short
                c.opinion = text.split("<")[0].strip().rstrip(".").strip().lower()
                c.prompt += c.opinion
                if c.opinion not in OPINIONS:
                    c.error = f"the teacher's opinion {text.strip()[:30]!r} is neither correct nor incorrect"
        live = [c for c in states if c.error is None]
        for c, text in zip(live, self._stage(live, "</opinion>\n<reason>", "</reason>", self.max_reason_tokens),
                           strict=True):
            c.prompt += text or ""
            c.reason = (text or "").strip()
        live = [c for c in states if c.error is None]
        for c, text in zip(live, self._stage(live, "</reason>\n<phrase>", "</phrase>", self.max_phrase_tokens),
                           strict=True):
            c.prompt += text or ""
            c.phrase = (text or "").strip()
        if self.close_with_answer:
            self._close([c for c in states if c.error is None])
        return [self._result(c) for c in states]

    def _close(self, live: list[_Case]) -> None:
        """A final answer for each phrase without one: the reference's when the teacher may see it, else the
        teacher completes "The final answer is \\boxed{" itself (one more short request)."""
        ask = []
        for c in live:
            if has_final_answer(c.phrase):
                continue
            if c.case.answer is not None and c.case.reference is not None:
                c.phrase = close_phrase(c.phrase, c.case.answer)
            else:
                ask.append(c)
        if ask:
            for c, text in zip(ask, self._stage(ask, " " + CLOSING, "}", ANSWER_TOKENS), strict=True):
                answer = own_answer(text) if text is not None else None
                if answer is not None:
                    c.phrase = close_phrase(c.phrase, answer)
            for c in ask:  # a failed closing request still leaves usable-or-not fields: judge them below
                c.error = None

    def _result(self, c: _Case) -> TeacherResult:
        if c.error is not None:
            return TeacherResult(None, "".join(c.raw), c.error)
        text = render_tags(c.opinion, c.reason, c.phrase)
        fb = parse_feedback(text)
        return TeacherResult(fb, text, None if fb else "unusable feedback (empty field or no answer)")

    def _chat(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        conversations = [build_messages(c.question, c.response, c.reference, c.reference_kind) for c in cases]
        done = self._count(self.client.chat(
            conversations, max_tokens=self.max_reason_tokens + self.max_phrase_tokens + 32, **self.sampling,
        ))
        return [self._chat_result(case, d) for case, d in zip(cases, done, strict=True)]

    def _chat_result(self, case: TeacherCase, done: Completion) -> TeacherResult:
        if done.text is None:
            return TeacherResult(None, "", done.error)
        text = done.text
        fb = parse_feedback(text)
        if fb is None and self.close_with_answer and case.answer is not None and case.reference is not None:
            # a well-formed triple whose phrase lacks \boxed{}: close it with the reference the teacher may see
            closed = _close_last_phrase(text, case.answer)
            fb = parse_feedback(closed) if closed is not None else None
            text = closed if fb is not None else text
        return TeacherResult(fb, text, None if fb else "unusable feedback (no well-formed opinion/reason/phrase)")


def _close_last_phrase(text: str, answer: str) -> str | None:
    """``text`` with its last ``<phrase>...</phrase>`` (or a trailing unclosed ``<phrase>...``) closed by the final
    answer, or None when there is no phrase to close."""
    start = text.rfind("<phrase>")
    if start < 0:
        return None
    body_start = start + len("<phrase>")
    end = text.find("</phrase>", body_start)
    body = text[body_start:] if end < 0 else text[body_start:end]
    return f"{text[:body_start]}{close_phrase(body.strip(), answer)}</phrase>"
