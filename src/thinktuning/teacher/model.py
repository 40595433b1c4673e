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

from dataclasses import dataclass

import torch

from thinktuning.generation import left_pad, positions_from_mask, sample
from thinktuning.models import end_of_turn_id
from thinktuning.teacher.prompt import Feedback, build_messages, parse_feedback

CLOSING = "The final answer is \\boxed{"


def has_final_answer(phrase: str) -> bool:
    """Whether a phrase already ends its answer in a well-formed ``\\boxed{}`` (checked by the parser)."""
    return parse_feedback(f"<opinion>correct</opinion><reason>x</reason><phrase>{phrase}</phrase>") is not None


@dataclass
class TeacherCase:
    """What the teacher is asked about: one question and one student response."""

    question: str
    response: str
    reference: str | None = None
    """Shown only when the run's ``teacher.sees_reference`` allows it (a labelled deviation from the paper)."""
    reference_kind: str = "answer"
    answer: str | None = None
    """The reference final answer, used only to close the phrase when the teacher may see the reference."""


@dataclass
class TeacherResult:
    feedback: Feedback | None
    raw: str
    error: str | None = None


def chat_prefix(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat-formatted prompt text, ending where the assistant's turn begins."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


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
    ) -> None:
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
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _fill(self, prefixes: list[str], max_tokens: int, stop: str) -> list[str]:
        """Greedy-decode each prefix until ``stop`` (excluded from the result) or ``max_tokens``."""
        rollouts = sample(
            self.model, [self._ids(p) for p in prefixes], max_new_tokens=max_tokens, eos_id=self.eos_id,
            pad_id=self.pad_id, greedy=True, batch_size=self.batch_size, stop_strings=(stop,),
            decode=self._decode, repetition_penalty=self.repetition_penalty,
        )
        return [self._decode(r.response_ids).split(stop)[0] for r in rollouts]

    @torch.no_grad()
    def _opinions(self, prefixes: list[str]) -> list[str]:
        out = []
        for start in range(0, len(prefixes), self.batch_size):
            chunk = [self._ids(p) for p in prefixes[start : start + self.batch_size]]
            ids, mask = left_pad(chunk, self.pad_id)
            device = next(self.model.parameters()).device
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=positions_from_mask(mask).to(device), use_cache=False, logits_to_keep=1,
            ).logits[:, -1, :]
            pick = logits[:, self._opinion_ids].argmax(-1).tolist()
            out.extend("correct" if k == 0 else "incorrect" for k in pick)
        return out

    def feedback(self, cases: list[TeacherCase]) -> list[TeacherResult]:
        if not cases:
            return []
        bases = [
            chat_prefix(self.tokenizer, build_messages(c.question, c.response, c.reference, c.reference_kind))
            for c in cases
        ]
        opinions = self._opinions([b + "<opinion>" for b in bases])
        reason_prefix = [b + f"<opinion>{o}</opinion>\n<reason>" for b, o in zip(bases, opinions, strict=True)]
        reasons = [r.strip() for r in self._fill(reason_prefix, self.max_reason_tokens, "</reason>")]
        phrase_prefix = [p + f"{r}</reason>\n<phrase>" for p, r in zip(reason_prefix, reasons, strict=True)]
        phrases = [p.strip() for p in self._fill(phrase_prefix, self.max_phrase_tokens, "</phrase>")]
        if self.close_with_answer:
            phrases = self._close(cases, phrase_prefix, phrases)
        results = []
        for o, r, p in zip(opinions, reasons, phrases, strict=True):
            raw = f"<opinion>{o}</opinion>\n<reason>{r}</reason>\n<phrase>{p}</phrase>"
            fb = parse_feedback(raw)
            results.append(TeacherResult(fb, raw, None if fb else "unusable feedback (empty field or no answer)"))
        return results

    def _close(self, cases: list[TeacherCase], prefixes: list[str], phrases: list[str]) -> list[str]:
        """Give every phrase a final ``\\boxed{}`` answer, so the spliced rollout can be graded."""
        todo = [i for i, p in enumerate(phrases) if not has_final_answer(p)]
        need_model = []
        for i in todo:
            sep = " " if phrases[i] else ""
            if cases[i].answer is not None and cases[i].reference is not None:
                phrases[i] = f"{phrases[i]}{sep}{CLOSING}{cases[i].answer}}}."
            else:
                need_model.append(i)
        if need_model:
            starts = [
                prefixes[i] + phrases[i] + (" " if phrases[i] else "") + CLOSING for i in need_model
            ]
            answers = self._fill(starts, 24, "}")
            for i, ans in zip(need_model, answers, strict=True):
                ans = ans.strip()
                if ans and "{" not in ans:
                    sep = " " if phrases[i] else ""
                    phrases[i] = f"{phrases[i]}{sep}{CLOSING}{ans}}}."
        return phrases
