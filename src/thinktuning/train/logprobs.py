"""Per-token log-probabilities of given responses under a model: pi_old before the update, pi during it.

Layout of a batch: ``[pad … prompt | response … pad]``: prompts left-padded to one width P, responses
right-padded to one width R, so response token j of every row sits at column P + j and is predicted by the
logits at column P + j - 1. Only the last R + 1 columns' logits are materialised (``logits_to_keep``): the
full (batch, length, vocab) tensor would be most of the memory of a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from thinktuning.tensors import left_pad, positions_from_mask


@dataclass
class TokenBatch:
    input_ids: torch.Tensor        # (B, P + R)
    attention_mask: torch.Tensor   # (B, P + R)
    position_ids: torch.Tensor     # (B, P + R)
    response_mask: torch.Tensor    # (B, R) float: 1 on real response tokens
    response_ids: torch.Tensor     # (B, R)
    prompt_width: int


def collate(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Build the batch layout above from token lists."""
    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(1, max(len(r) for r in responses))
    r_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        if r:
            r_ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            r_mask[i, : len(r)] = 1
    ids = torch.cat([p_ids, r_ids], dim=1)
    mask = torch.cat([p_mask, r_mask], dim=1)
    return TokenBatch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        response_mask=r_mask.float(),
        response_ids=r_ids,
        prompt_width=p_ids.shape[1],
    )


def token_logprobs(model, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
    """log pi(response token) for every response position, shape (B, R); differentiable when grads are on."""
    device = next(model.parameters()).device
    width = batch.response_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
        logits_to_keep=width + 1,
    ).logits[:, :-1, :].float()
    logits = logits / temperature
    targets = batch.response_ids.to(device)
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * batch.response_mask.to(device)
