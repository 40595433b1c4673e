"""A local transformers model as the teacher, decoded so that the tagged format cannot be lost.

A 135M teacher does not follow a tagged output format from few-shot demonstrations alone, so we never ask it
to: we write every tag ourselves and let the model fill only the inside of each field.

1. ``opinion``: the prompt ends with ``<opinion>``; we compare the next-token log-probability of "correct" and
   "incorrect" and write the likelier one. One forward pass, always a valid opinion.
2. ``reason``: we append ``</opinion>\\n<reason>`` and decode greedily until ``</reason>`` or the token limit.
3. ``phrase``: we append ``</reason>\\n<phrase>`` and decode until ``</phrase>`` or the limit.
4. If the phrase has no ``\\boxed{}`` and ``close_with_answer`` is on, we write "The final answer is \\boxed{"
   and let the teacher complete it up to "}" (or, when the teacher may see the reference, write the reference).

The result is rendered and parsed with the same parser any other teacher's output goes through, so "no
feedback" (e.g. an empty reason) is decided in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

from thinktuning.models.load import end_of_turn_id
from thinktuning.rollout.decoding import DecodeSession, decode_linears
from thinktuning.teacher.base import TeacherCase, TeacherResult
from thinktuning.teacher.prompt import (
    CLOSING,
    build_messages,
    chat_prefix,
    has_final_answer,
    parse_feedback,
    render_tags,
)


class ModelTeacher:
    """Feedback from a local causal LM (by default a frozen copy of the student's initial weights)."""

    name = "model"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_reason_tokens: int = 256,
        max_phrase_tokens: int = 256,
        repetition_penalty: float = 1.0,
        close_with_answer: bool = True,
        batch_size: int = 8,
        forward_context: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        """``forward_context``: a context under which ``model`` acts as the teacher, for a model that is shared
        with the student being trained (LoRA: the same model with adapters off). The model is then left as it
        is; without one, the model is the teacher's alone and is frozen here."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_reason_tokens = max_reason_tokens
        self.max_phrase_tokens = max_phrase_tokens
        self.repetition_penalty = repetition_penalty
        self.close_with_answer = close_with_answer
        self.batch_size = batch_size
        self.eos_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self._opinion_ids = [self._ids(o)[0] for o in ("correct", "incorrect")]
        self.stats = {"tokens_in": 0, "tokens_out": 0}
        """Totals since start: prompt tokens per case (the whole prompt, as a server would bill it, although the
        shared instructions are computed once) and tokens the teacher generated."""
        self._prefix: tuple[str, tuple | None] | None = None
        self._forward_context = forward_context or contextlib.nullcontext
        if forward_context is None:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    def context(self) -> tuple[int | None, int]:
        """The model's context window and the token count of the instructions and demonstrations."""
        from thinktuning.models.load import context_limit

        prefix = chat_prefix(self.tokenizer, build_messages("", ""))
        return context_limit(self.model.config), len(self._ids(prefix))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _shared_prefix(self) -> tuple[str, tuple | None]:
        """The chat text every request starts with (system + demonstrations), read into a KV cache once.

        Found as the common prefix of two renderings that differ only in the final question, cut back to a line
        break so that tokenizing prefix and rest separately cannot split a token differently.
        """
        if self._prefix is None:
            a = chat_prefix(self.tokenizer, build_messages("A", "B"))
            b = chat_prefix(self.tokenizer, build_messages("C", "D"))
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            text = a[: a.rfind("\n", 0, n) + 1]
            cache = None
            if text:
                session = DecodeSession(self.model, 1, self.pad_id)
                ids = self._ids(text)
                session.feed([ids])
                cache = (session.cache, len(ids))
            self._prefix = (text, cache)
        return self._prefix

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        out: list[TeacherResult] = []
        # every forward of the teacher, the shared prefix's included, runs inside (and decodes with
        # generation.decode_linears: patched once per call, not once per token)
        with self._forward_context(), decode_linears(self.model):
            for start in range(0, len(cases), self.batch_size):
                out.extend(self._feedback_batch(cases[start : start + self.batch_size]))
        return out

    def _gen(self, session: DecodeSession, max_tokens: int, stop: str, rows=None) -> list[str]:
        ids = session.generate(
            max_tokens, eos_id=self.eos_id, stop_strings=(stop,), decode=self._decode,
            repetition_penalty=self.repetition_penalty, rows=rows,
        )
        self.stats["tokens_out"] += sum(map(len, ids))
        return [self._decode(x) for x in ids]

    def _feedback_batch(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        prefix_text, prefix_cache = self._shared_prefix()
        texts = [
            chat_prefix(self.tokenizer, build_messages(c.question, c.response, c.reference, c.reference_kind))
            + "<opinion>"
            for c in cases
        ]
        shared = prefix_cache is not None and all(t.startswith(prefix_text) for t in texts)
        session = DecodeSession(self.model, len(cases), self.pad_id, prefix_cache if shared else None)
        fed = [self._ids(t[len(prefix_text):] if shared else t) for t in texts]
        session.feed(fed)
        self.stats["tokens_in"] += sum(map(len, fed)) + (prefix_cache[1] * len(cases) if shared else 0)
        # 1. opinion: the likelier of the two words, so it is always valid
        pick = session.last_logits[:, self._opinion_ids].argmax(-1).tolist()
        opinions = ["correct" if k == 0 else "incorrect" for k in pick]
        session.feed([self._ids(f"{o}</opinion>\n<reason>") for o in opinions])
        # 2. reason, stopped at its closing tag
        raw = self._gen(session, self.max_reason_tokens, "</reason>")
        reasons = [r.split("</reason>")[0].strip() for r in raw]
        session.feed([self._ids(("" if "</reason>" in r else "</reason>") + "\n<phrase>") for r in raw])
        # 3. phrase, stopped at its closing tag
        raw = self._gen(session, self.max_phrase_tokens, "</phrase>")
        phrases = [p.split("</phrase>")[0].strip() for p in raw]
        if self.close_with_answer:
            phrases = self._close(cases, session, phrases)
        results = []
        for o, r, p in zip(opinions, reasons, phrases, strict=True):
            text = render_tags(o, r, p)
            fb = parse_feedback(text)
            results.append(TeacherResult(fb, text, None if fb else "unusable feedback (empty field or no answer)"))
        return results

    def _close(self, cases: list[TeacherCase], session: DecodeSession, phrases: list[str]) -> list[str]:
        """Give every phrase a final ``\\boxed{}`` answer, so the spliced rollout can be graded."""
        need_model = []
        for i, p in enumerate(phrases):
            if has_final_answer(p):
                continue
            sep = " " if p else ""
            if cases[i].answer is not None and cases[i].reference is not None:
                phrases[i] = f"{p}{sep}{CLOSING}{cases[i].answer}}}."
            else:
                need_model.append(i)
        if need_model:
            session.feed([self._ids(" " + CLOSING) if i in need_model else [] for i in range(len(phrases))])
            answers = self._gen(session, 24, "}", rows=need_model)
            for i in need_model:
                ans = answers[i].split("}")[0].strip()
                if ans and "{" not in ans:
                    sep = " " if phrases[i] else ""
                    phrases[i] = f"{phrases[i]}{sep}{CLOSING}{ans}}}."
        return phrases
