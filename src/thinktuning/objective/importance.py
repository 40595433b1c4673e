"""The truncated importance correction for tokens another engine sampled (vLLM, or a lower-precision sampler).

The trainer keeps its own log-probs as pi_old and weights each sampled token's loss by ``min(pi_old / pi_sampler,
C)``, as TRL's importance-sampling correction does in its ``token_truncate`` mode; teacher tokens, the student's
continuation after them, and padding were not drawn by that engine and keep weight 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def importance_weights(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, valid: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor, float, int]:
    """Truncated importance weights ``min(exp(trainer - sampler), cap)`` on ``valid`` tokens, 1 elsewhere.

    ``valid`` marks tokens that the sampler drew (teacher tokens and padding are not). Returns the weights, the sum
    of ``|trainer - sampler|`` over valid tokens and their count (for ``rollout/logprob_abs_diff``). ``cap=None``
    measures the mismatch but applies no correction (all weights 1).
    """
    valid = valid.bool()
    diff = torch.where(valid, trainer_logp.detach().float() - sampler_logp.float(), 0.0)
    abs_sum = float(diff.abs().sum())
    count = int(valid.sum())
    if cap is None:
        return torch.ones_like(diff), abs_sum, count
    w = torch.where(valid, diff.clamp(max=30.0).exp().clamp(max=cap), 1.0)
    return w, abs_sum, count


def sampler_positions(response_ids: Sequence[int], teacher_mask: Sequence[int], n_sampled: int) -> int:
    """How many leading response tokens are still the sampler's own: the guide keeps a prefix of the sampled
    response and splices teacher tokens after it (anything after the first teacher token is not vLLM's)."""
    first_teacher = next((j for j, m in enumerate(teacher_mask) if m), len(response_ids))
    return min(n_sampled, first_teacher, len(response_ids))


def batch_importance_weights(
    rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[float] | None]], trainer_logp: torch.Tensor,
    cap: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token loss weights for a micro-batch laid out like ``train.logprobs.collate`` (responses from column 0).

    ``rows`` holds each row's ``(response_ids, teacher_mask, sampler_logprobs)``. Returns the weights (on the
    device of ``trainer_logp``) and the sums behind the mismatch metrics: ``abs_sum`` and ``count`` of
    ``|trainer - sampler|`` over sampled tokens, and ``weight_sum`` of their weights.
    """
    sampler = torch.zeros_like(trainer_logp, dtype=torch.float32, device="cpu")
    valid = torch.zeros_like(sampler, dtype=torch.bool)
    for i, (response_ids, teacher_mask, lps) in enumerate(rows):
        lps = lps or []
        k = sampler_positions(response_ids, teacher_mask, len(lps))
        sampler[i, :k] = torch.tensor(list(lps[:k]), dtype=torch.float32)
        valid[i, :k] = True
    w, abs_sum, count = importance_weights(trainer_logp.detach().cpu(), sampler, valid, cap)
    sums = {"abs_sum": abs_sum, "count": float(count), "weight_sum": float(torch.where(valid, w, 0.0).sum())}
    return w.to(trainer_logp.device), sums


def mismatch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``rollout/logprob_abs_diff`` and ``rollout/is_weight_mean`` from summed :func:`batch_importance_weights`
    sums; NaN when no token was sampled by the other engine."""
    n = sums.get("count", 0.0)
    return {
        "rollout/logprob_abs_diff": sums["abs_sum"] / n if n else float("nan"),
        "rollout/is_weight_mean": sums["weight_sum"] / n if n else float("nan"),
    }
