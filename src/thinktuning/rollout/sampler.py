"""Student rollouts on transformers: batched sampling that returns token ids and each sampled token's log-probability.

We drive the KV-cache loop ourselves instead of calling ``model.generate`` because RL needs, per sampled token,
its log-probability under the sampling distribution, and ``generate`` only offers full-vocabulary scores for
every step (hundreds of MB for a batch). The loop is the one ``generate`` runs: left-padded prompts, explicit
position ids so padding does not shift positions, a KV cache, stop at end-of-turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from thinktuning.config.schema import RolloutConfig
from thinktuning.models.precision import compute_context
from thinktuning.rollout.decoding import buffered_cache, decode_linears, draw, fill_holes, top_p_filter
from thinktuning.rollout.lockstep import Lockstep
from thinktuning.rollout.types import Rollout
from thinktuning.tensors import left_pad, positions_from_mask


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    compact: bool = True,
    lockstep: Lockstep | None = None,
) -> list[Rollout]:
    """Sample one response per prompt (repeat a prompt G times for a group), in batches of ``batch_size``.

    A row ends at ``eos_id`` or after ``max_new_tokens``. The per-token log-probs are recorded under the
    temperature but before top-p, i.e. of the policy the trainer scores (the teacher decodes with
    :class:`DecodeSession`, which adds stop strings and a repetition penalty).

    ``compact`` drops a row from the batch (and its KV cache) once it has ended, so the remaining decode steps
    compute only the rows still writing; ``False`` keeps the batch whole to the end (padding the ended rows), as
    ``model.generate`` does. Both sample from the same distribution; with the same generator they draw different
    samples, since the ended rows no longer consume random numbers.

    ``lockstep``: with sharded parameters, every process of the run calls ``sample`` at the same point, with any
    number of prompts (none too), and the processes run the same forward passes (:mod:`~thinktuning.rollout.lockstep`).
    """
    out: list[Rollout] = []
    batches = [prompts[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    with decode_linears(model):
        b = 0
        while lockstep.any(b < len(batches)) if lockstep is not None else b < len(batches):
            if b < len(batches):
                out.extend(_sample_batch(model, batches[b], max_new_tokens, eos_id, pad_id, temperature, top_p,
                                         greedy, generator, compact, lockstep))
            else:  # this process is out of prompts; another one is not
                lockstep.idle(model, max_new_tokens)
            b += 1
    return out


def _sample_batch(model, prompts, max_new_tokens, eos_id, pad_id, temperature, top_p, greedy, generator, compact,
                  lockstep=None):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    pos = positions_from_mask(mask)
    cache = buffered_cache()
    n = ids.shape[0]
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long)
    logps = torch.zeros((n, max_new_tokens), dtype=torch.float32)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    live = torch.arange(n)  # the original index of each row in the batch (all of them, unless compacting)
    step_in, step_pos = ids, pos
    for t in range(max_new_tokens):
        if bool(done.all()):  # only in lockstep: this batch has ended, another process's has not
            lockstep.idle_forward(model)
        else:
            step_in, step_pos, mask, live = _decode_step(model, cache, step_in, step_pos, mask, live, t, tokens, logps,
                                                         lengths, done, eos_id, pad_id, temperature, top_p, greedy,
                                                         generator, compact)
        writing = not bool(done.all()) and t + 1 < max_new_tokens
        if not (lockstep.any(writing) if lockstep is not None else writing):
            break
    if was_training:
        model.train()
    rollouts = []
    for i, prompt in enumerate(prompts):
        k = int(lengths[i])
        rollouts.append(
            Rollout(
                prompt_ids=list(prompt),
                response_ids=tokens[i, :k].tolist(),
                logprobs=logps[i, :k].tolist(),
                finished=bool(done[i]),
            )
        )
    return rollouts


def _decode_step(model, cache, step_in, step_pos, mask, live, t, tokens, logps, lengths, done, eos_id, pad_id,
                 temperature, top_p, greedy, generator, compact):
    """One token for every live row: forward, draw, record (into ``tokens``, ``logps``, ``lengths``, ``done`` in
    place); returns the next step's inputs and live rows, compacted when rows ended and ``compact``."""
    device = step_in.device
    logits = model(
        input_ids=step_in, attention_mask=mask, position_ids=step_pos,
        past_key_values=cache, use_cache=True, logits_to_keep=1,
    ).logits[:, -1, :].float()
    logp_full = torch.log_softmax(logits / temperature, dim=-1)
    if greedy:
        nxt = logp_full.argmax(-1)
    else:
        probs = torch.softmax(top_p_filter(logits / temperature, top_p), dim=-1)
        nxt = draw(probs, generator).to(device)
    ended = done[live]  # rows that ended earlier (only without compaction): they are fed padding
    nxt = torch.where(ended.to(device), torch.full_like(nxt, pad_id), nxt)
    nxt_cpu = nxt.cpu()
    tokens[live, t] = nxt_cpu
    logps[live, t] = logp_full.gather(-1, nxt[:, None]).squeeze(1).cpu()
    newly = (nxt_cpu == eos_id) & ~ended
    lengths[live[newly]] = t + 1
    done[live[newly]] = True
    step_in = nxt[:, None]
    step_pos = step_pos[:, -1:] + 1
    mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
    if compact and bool(newly.any()) and not bool(done.all()):
        keep = torch.tensor(fill_holes(newly.tolist()), dtype=torch.long)
        cache.batch_select_indices(keep.to(device))
        live, step_in, step_pos, mask = live[keep], step_in[keep], step_pos[keep], mask[keep]
    return step_in, step_pos, mask, live


class TransformersEngine:
    """The :class:`~thinktuning.rollout.engine.RolloutEngine` over the training model itself: it samples from the
    live weights, so ``push_weights`` has nothing to do.

    With a lower ``compute_dtype`` than float32 it samples under autocast, as the update computes: the float32
    weights are cast once per call (autocast caches the casts of trainable weights for the whole context), not once
    per token. Its log-probs are then not the update's own to float precision (the cached decode and the full
    forward round differently in bf16), so ``exact_logprobs`` is False and the update applies the truncated
    importance correction and logs the mismatch, as it does for vLLM. ``lockstep``: given when the parameters are
    sharded; every process then calls ``sample`` at the same points, with its own prompts or none."""

    def __init__(self, model_fn: Callable[[], torch.nn.Module], cfg: RolloutConfig, eos_id: int, pad_id: int,
                 compute_dtype: torch.dtype = torch.float32, lockstep: Lockstep | None = None) -> None:
        self.model_fn, self.cfg, self.eos_id, self.pad_id = model_fn, cfg, eos_id, pad_id
        self.lockstep = lockstep
        self.compute_dtype = compute_dtype
        self.exact_logprobs = compute_dtype == torch.float32

    def sample(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Rollout]:
        r = self.cfg
        model = self.model_fn()
        with compute_context(next(model.parameters()).device.type, self.compute_dtype):
            return sample(
                model, prompts, max_new_tokens=r.max_new_tokens, eos_id=self.eos_id, pad_id=self.pad_id,
                temperature=r.temperature, top_p=r.top_p, generator=torch.Generator().manual_seed(seed),
                batch_size=r.batch_size, lockstep=self.lockstep,
            )

    def push_weights(self, model: torch.nn.Module) -> None:
        del model  # the live model is sampled directly

    def close(self) -> None:
        pass
