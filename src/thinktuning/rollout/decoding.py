"""KV-cache decoding shared by the student's sampler and the teacher: nucleus filtering, a cheap categorical draw,
a KV cache that grows in blocks, in-place batch compaction, the decode-step GEMM patch for CPUs, and the greedy
:class:`DecodeSession` the model teacher writes with. Measurements behind these choices are in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from thinktuning.tensors import left_pad


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    from transformers.generation.logits_process import TopPLogitsWarper

    return TopPLogitsWarper(top_p=top_p)(None, logits)


DECODE_ROWS = 256
"""Linear layers fed at most this many rows (a decode step: one token per sequence) take the transposed GEMM."""


def gemm_rows(rows: int) -> int:
    """How many rows to hand the BLAS for ``rows`` real ones: above 8, the next multiple of 8.

    oneMKL's ``W @ x.T`` is fast for multiples of 8 columns and slow in between (``BENCHMARKS.md``, "Decoding
    path"). Zero rows are appended and their outputs dropped; the real rows' products are unchanged."""
    return rows if rows <= 8 else -(-rows // 8) * 8


def _decode_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows > DECODE_ROWS or torch.is_grad_enabled():
        return torch.nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    padded = gemm_rows(rows)
    if padded != rows:
        flat = torch.cat([flat, flat.new_zeros(padded - rows, flat.shape[-1])])
    y = (self.weight @ flat.T).T[:rows].contiguous()
    if self.bias is not None:
        y = y + self.bias
    return y.view(*x.shape[:-1], self.weight.shape[0])


@contextlib.contextmanager
def decode_linears(model: torch.nn.Module) -> Iterator[None]:
    """Compute the model's linear layers as ``(W @ x.T).T`` while it decodes a few rows at a time.

    Same products, another GEMM shape: for a handful of rows against a weight read from memory, the CPU BLAS
    (oneMKL in the torch wheel) is faster with ``W @ x.T`` than with ``x @ W.T`` (``BENCHMARKS.md``, "Decoding
    path"), with identical log-probs. Only exact ``nn.Linear`` modules are
    touched (a LoRA or quantized layer keeps its own forward; its inner ``nn.Linear`` parts are patched), only
    without autograd and only up to :data:`DECODE_ROWS` rows, and the patch is removed on exit.
    """
    patched = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_decode_linear, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def fill_holes(dropped: Sequence[bool]) -> list[int]:
    """The rows to keep, in an order that compacts a batch by moving few rows: a dropped row among the first
    ``m`` (the number kept) takes a kept row from past ``m``, every other kept row stays where it is. Hand-checked:
    dropping rows 1 and 2 of 5 keeps ``[0, 3, 4]``, dropping row 1 of 5 keeps ``[0, 4, 2, 3]``."""
    m = len(dropped) - sum(dropped)
    order = list(range(m))
    holes = [i for i in range(m) if dropped[i]]
    tail = [i for i in range(m, len(dropped)) if not dropped[i]]
    for hole, row in zip(holes, tail, strict=True):
        order[hole] = row
    return order


CACHE_HEADROOM = 256
"""Free token slots a KV buffer is (re)allocated with: a copy of the cache every 256 tokens instead of every token,
at most 256 tokens of extra memory per row."""


@functools.cache
def _buffered_layer_class():
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in a buffer with room for :data:`CACHE_HEADROOM` more
        tokens, so appending a token writes in place instead of concatenating (copying) the whole cache.
        ``keys``/``values`` stay views of the filled part; anything that replaces them (deepcopy,
        ``batch_repeat_interleave``, ``batch_select_indices``) is noticed by the pointer check and copied into a
        fresh buffer on the next update."""

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n_old = self.get_seq_length()
            n_new = n_old + key_states.shape[-2]
            buf = getattr(self, "_kbuf", None)
            if (buf is None or buf.shape[-2] < n_new or buf.shape[:2] != key_states.shape[:2]
                    or (n_old and self.keys.data_ptr() != buf.data_ptr())):
                cap = n_new + CACHE_HEADROOM
                self._kbuf = key_states.new_empty(*key_states.shape[:2], cap, key_states.shape[-1])
                self._vbuf = value_states.new_empty(*value_states.shape[:2], cap, value_states.shape[-1])
                if n_old:
                    self._kbuf[:, :, :n_old] = self.keys
                    self._vbuf[:, :, :n_old] = self.values
            self._kbuf[:, :, n_old:n_new] = key_states
            self._vbuf[:, :, n_old:n_new] = value_states
            self.keys, self.values = self._kbuf[:, :, :n_new], self._vbuf[:, :, :n_new]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows ``indices``. When each row either stays where it is or comes from past the end of
            the kept batch (the order :func:`fill_holes` gives), only the moved rows' filled part is copied, in
            place: indexing copied the whole buffer, headroom included (``BENCHMARKS.md``, "Decoding path"). Any
            other order indexes a copy."""
            idx = indices.tolist()
            m = len(idx)
            buf = getattr(self, "_kbuf", None)
            if (self.get_seq_length() == 0 or buf is None or self.keys.data_ptr() != buf.data_ptr()
                    or not all(src == dst or src >= m for dst, src in enumerate(idx))):
                super().batch_select_indices(indices)
                return
            n = self.get_seq_length()
            for dst, src in enumerate(idx):
                if src != dst:  # row dst was dropped (a kept row would sit at its own place), row src is past m
                    self._kbuf[dst, :, :n] = self._kbuf[src, :, :n]
                    self._vbuf[dst, :, :n] = self._vbuf[src, :, :n]
            self._kbuf, self._vbuf = self._kbuf[:m], self._vbuf[:m]
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

    return BufferedLayer


def buffered_cache():
    """A ``DynamicCache`` of :func:`_buffered_layer_class` layers (same semantics, no per-token copy of the cache).

    ``torch.cat`` of the whole cache at every token dominated long teacher decodes; growing in blocks gives
    identical logits (``BENCHMARKS.md``, "Decoding path").
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _buffered_layer_class()
    return cache


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``probs`` (B, V), by inverting the cumulative distribution at a uniform draw.

    The same distribution as ``torch.multinomial(probs, 1)``, at a fraction of the cost: multinomial draws an
    exponential variate for every vocabulary entry (49k per row here; ``BENCHMARKS.md``, "Decoding path"); this
    takes one cumulative sum and one uniform per row. Rows need not be normalised; entries of
    probability 0 are never drawn.
    """
    cdf = probs.float().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator).to(cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(1)
    over = idx >= probs.shape[1]  # u * total rounded up to the total itself: take the last token of nonzero mass
    if bool(over.any()):
        last = probs.shape[1] - 1 - (probs.flip(-1) > 0).long().argmax(-1)
        idx = torch.where(over, last, idx)
    return idx


def _stopped(tokens: list[int], stop_strings: tuple[str, ...], decode) -> bool:
    tail = decode(tokens[-12:])
    return any(s in tail for s in stop_strings)


class DecodeSession:
    """A batch decoded in phases on one KV cache: feed text, generate, feed more text, generate again.

    The teacher fills three fields one after the other; re-reading its ~1,300-token prompt for every field
    (and every step) was most of its cost. Here the prompt is read once, and the few-shot prefix that every
    request shares can be read once per run (``prefix``: a batch-1 cache and its length) and copied per batch.
    Rows advance unevenly: a row that stopped is fed padding with attention mask 0, so the cache stays aligned
    and the padding is never attended to. Decoding is faster under :func:`decode_linears` (the teacher runs its
    sessions inside it).
    """

    def __init__(self, model, n: int, pad_id: int, prefix: tuple[Any, int] | None = None) -> None:
        self.model, self.n, self.pad_id = model, n, pad_id
        self.device = next(model.parameters()).device
        if prefix is not None:
            cache, length = prefix
            self.cache = copy.deepcopy(cache)
            if n > 1:
                self.cache.batch_repeat_interleave(n)
            self.mask = torch.ones((n, length), dtype=torch.long, device=self.device)
            self.next_pos = torch.full((n,), length, dtype=torch.long, device=self.device)
        else:
            self.cache = buffered_cache()
            self.mask = torch.zeros((n, 0), dtype=torch.long, device=self.device)
            self.next_pos = torch.zeros((n,), dtype=torch.long, device=self.device)
        self.last_logits: torch.Tensor | None = None
        self.history: list[list[int]] = [[] for _ in range(n)]

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
        pos = self.next_pos[:, None] + (new_mask.cumsum(-1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        logits = self.model(
            input_ids=ids, attention_mask=self.mask, position_ids=pos, past_key_values=self.cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1, :].float()
        self.next_pos = self.next_pos + new_mask.sum(-1)
        active = new_mask.sum(-1) > 0
        if self.last_logits is None:
            self.last_logits = logits
        else:
            self.last_logits = torch.where(active[:, None], logits, self.last_logits)
        return logits

    def feed(self, rows: Sequence[Sequence[int]]) -> None:
        """Append each row's tokens (rows may differ in length, or be empty)."""
        ids, mask = left_pad([list(r) for r in rows], self.pad_id)
        self._forward(ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def generate(
        self,
        max_new_tokens: int,
        *,
        eos_id: int,
        stop_strings: Sequence[str] = (),
        decode=None,
        repetition_penalty: float = 1.0,
        rows: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Greedy-decode the rows in ``rows`` (default all) until eos, a stop string or the limit.

        ``repetition_penalty`` applies to the tokens this session has generated (the teacher's own fields), not
        to its prompt: penalising the demonstrations' words would push a small teacher away from the format.
        """
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        if self.last_logits is None:
            raise RuntimeError("feed the session before generating")
        if stop_strings and decode is None:
            raise ValueError("stop_strings need a decode function (token ids -> text)")
        penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
        active = torch.zeros(self.n, dtype=torch.bool)
        active[list(range(self.n)) if rows is None else list(rows)] = True
        out: list[list[int]] = [[] for _ in range(self.n)]
        for _ in range(max_new_tokens):
            if not bool(active.any()):
                break
            logits = self.last_logits
            if penalty is not None:
                seen, _ = left_pad([h or [self.pad_id] for h in self.history], self.pad_id)
                logits = penalty(seen.to(self.device), logits.clone())
            nxt = logits.argmax(-1).cpu()
            nxt = torch.where(active, nxt, torch.full_like(nxt, self.pad_id))
            for i in torch.nonzero(active).flatten().tolist():
                tok = int(nxt[i])
                out[i].append(tok)
                self.history[i].append(tok)
            self._forward(nxt[:, None].to(self.device), active.long()[:, None].to(self.device))
            for i in torch.nonzero(active).flatten().tolist():
                if out[i][-1] == eos_id or (stop_strings and _stopped(out[i], tuple(stop_strings), decode)):
                    active[i] = False
        return out
