"""Policy loss for ThinkTuning (step 7 in ``docs/method.md``): PPO-clip on the student's tokens, the shaped objective
on guided tokens (:mod:`thinktuning.objective.shaping`), an optional KL term, and the registered aggregations.

All functions here are pure functions of tensors; the update decides which tokens are guided and how batches are
split into micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from thinktuning.objective.registry import lookup, register
from thinktuning.objective.shaping import SHAPINGS

F = TypeVar("F", bound=Callable[..., object])

LOG_RATIO_CLAMP = 20.0
"""|log pi - log pi_old| is clamped to this before ``exp`` so a stale token cannot overflow the ratio to
inf (verl does the same); at 20 the ratio is ~5e8, far outside any clip range, so values are unchanged."""


# ---------------------------------------------------------------------------------------------------------
# aggregations
# ---------------------------------------------------------------------------------------------------------

Aggregation = Callable[..., torch.Tensor]

AGGREGATIONS: dict[str, Aggregation] = {}
"""name -> ``fn(loss_mat (B, T), mask (B, T) bool, normalizer, length_norm) -> scalar``."""


def register_aggregation(name: str) -> Callable[[F], F]:
    """Decorator filing a loss aggregation under ``name`` in :data:`AGGREGATIONS`."""
    return register(AGGREGATIONS, "aggregation", name)  # type: ignore[arg-type]


def _check_normalizer(normalizer: float | None, default: float) -> float:
    """Explicit normalizers must be positive; the default is floored at 1 so empty masks give 0, not NaN."""
    if normalizer is None:
        return max(float(default), 1.0)
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return float(normalizer)


@register_aggregation("token-mean")
def token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None,
               length_norm: float | None = None) -> torch.Tensor:
    """Mean over all response tokens of the (mini-)batch: every token weighs the same (the recipe's choice).

    With gradient accumulation the caller passes the mini-batch's total token count as ``normalizer`` so
    that the micro-batch losses add up to exactly the mini-batch token-mean; dividing each micro-batch by
    its own count would over-weight tokens of short micro-batches.
    """
    del length_norm
    total = torch.where(mask, loss_mat, 0.0).sum()
    return total / _check_normalizer(normalizer, mask.sum().item())


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(
    loss_mat: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None, length_norm: float | None = None
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean: every rollout weighs the same, however long.

    ``normalizer`` is the number of sequences of the mini-batch (default: the rows of this tensor,
    fully padded rows included; they contribute 0).
    """
    del length_norm
    per_seq_sum = torch.where(mask, loss_mat, 0.0).sum(dim=-1)
    per_seq_count = mask.sum(dim=-1).clamp_min(1)
    return (per_seq_sum / per_seq_count).sum() / _check_normalizer(normalizer, loss_mat.shape[0])


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss_mat: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None, length_norm: float | None = None
) -> torch.Tensor:
    """Dr. GRPO's aggregation: each sequence's token *sum* divided by one constant L, then averaged over sequences.

    L is the same for every sequence, so unlike a per-sequence mean this does not up-weight the tokens of short
    responses (Dr. GRPO's length-bias fix). It must also be the same for every micro-batch of an update, or the
    gradient would depend on how rows were split, sorted or skipped: the update passes the generation budget
    (``rollout.max_new_tokens``) as ``length_norm``. Without it, L is this tensor's padded width (correct only for
    a whole batch in one call). ``normalizer`` is the number of sequences of the mini-batch (default: rows here).
    """
    per_seq_sum = torch.where(mask, loss_mat, 0.0).sum(dim=-1)
    if length_norm is not None and not length_norm > 0:
        raise ValueError(f"length_norm must be > 0, got {length_norm}")
    num_cols = float(length_norm) if length_norm is not None else max(loss_mat.shape[-1], 1)
    return (per_seq_sum / num_cols).sum() / _check_normalizer(normalizer, loss_mat.shape[0])


def aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, normalizer: float | None = None,
    length_norm: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar with the registered aggregation ``mode``.

    ``mask`` may be bool or float; any nonzero entry counts as a token. Masked-out entries are *selected
    away* (not multiplied by 0), so inf/NaN values in padding cannot leak into the result.
    """
    fn = lookup(AGGREGATIONS, "aggregation", mode)
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} differ in shape")
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be (B, T), got shape {tuple(loss_mat.shape)}")
    return fn(loss_mat, mask != 0, normalizer, length_norm)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# the policy loss
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    """Scalar loss to call ``backward`` on, plus detached float metrics for logging.

    ``metrics["pg_loss"]`` is aggregated exactly like ``loss`` (same mode and normalizer) so that it adds
    up over micro-batches the same way; the fractions, means and counts describe this call's tokens only.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    """Tokens behind each token mean (:data:`COUNTS`), for :func:`combine_micro_batches`."""


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate ``max(-A * rho, -A * clamp(rho, 1 - clip_low, 1 + clip_high))``.

    ``advantages`` must broadcast against ``logp`` (e.g. (B, 1)). Returns ``(loss, ratio, clipped)``,
    where ``clipped`` is True where the clipped branch is strictly larger, i.e. where clipping zeroed the
    gradient. Separate ``clip_low``/``clip_high`` allow DAPO-style asymmetric ("clip-higher") ranges.
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped_branch = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped_branch), ratio, clipped_branch > unclipped


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` over ``mask`` as a Python float; 0.0 for an empty mask (never NaN)."""
    count = int(mask.sum().item())
    if count == 0:
        return 0.0
    return float(torch.where(mask, values, 0.0).sum().item() / count)


METRIC_NAMES = ("pg_loss", "clip_fraction", "ratio_mean", "shaped_token_fraction", "shaped_weight_mean",
                "shaped_weight_max", "fallback_token_count")
"""The metrics :func:`policy_loss` always returns (``kl`` too when a reference is given)."""

COUNTS = {"clip_fraction": "n_ppo", "ratio_mean": "n_tokens", "shaped_token_fraction": "n_tokens",
          "shaped_weight_mean": "n_shaped", "kl": "n_tokens"}
"""Token means and the token count each is a mean over; :func:`policy_loss` returns those counts under
``counts`` so that :func:`combine_micro_batches` can weight them exactly."""


def combine_micro_batches(parts: list[dict[str, float]], counts: list[dict[str, float]]) -> dict[str, float]:
    """The metrics one :func:`policy_loss` call over the union of micro-batches would have given.

    ``pg_loss`` adds up (each part is already divided by the update's global normaliser), counts add up, maxima
    take the maximum, and token means are weighted by the tokens they are means over (:data:`COUNTS`).
    """
    out: dict[str, float] = {}
    keys = {k for m in parts for k in m}
    for key in keys:
        vals = [(m[key], c) for m, c in zip(parts, counts, strict=True) if key in m]
        if key in ("pg_loss", "fallback_token_count"):
            out[key] = sum(v for v, _ in vals)
        elif key == "shaped_weight_max":
            out[key] = max(v for v, _ in vals)
        elif key in COUNTS:
            total = sum(c.get(COUNTS[key], 0.0) for _, c in vals)
            out[key] = sum(v * c.get(COUNTS[key], 0.0) for v, c in vals) / total if total else 0.0
        else:
            out[key] = sum(v for v, _ in vals) / len(vals)
    return out


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    guided_mask: torch.Tensor,
    *,
    shaping: str = "aas",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    token_weight: torch.Tensor | None = None,
    length_norm: float | None = None,
) -> LossOutput:
    """ThinkTuning's policy loss over a (micro-)batch of rollouts.

    Args:
        logp: (B, T) log-probabilities of the response tokens under the current policy (with grad).
        old_logp: (B, T) log-probabilities under the policy that sampled / scored the batch (pi_old). The
            ratio to it is used for ordinary tokens only; shaped guided tokens ignore it.
        advantages: (B,) one advantage per rollout, broadcast over its tokens.
        response_mask: (B, T) bool/float, nonzero on real response tokens, 0 on padding.
        guided_mask: (B, T) bool/float, nonzero on tokens that get the shaped objective. Which tokens those
            are (the whole guided rollout, as in the recipe, or only the teacher's tokens) is decided by
            the caller. Entries outside ``response_mask`` are ignored.
        shaping: a name in :data:`SHAPINGS` ("aas", "aas-recipe", "luffy", "none").
        clip_low, clip_high: PPO clip range ``[1 - clip_low, 1 + clip_high]`` for ordinary tokens.
        aggregation: a name in :data:`AGGREGATIONS`.
        normalizer: passed to the aggregation; with gradient accumulation, the mini-batch's token count
            ("token-mean") or sequence count (the "seq-*" modes) so micro-batch losses sum correctly.
        ref_logp: (B, T) reference-policy log-probabilities for the optional KL penalty.
        kl_coef: weight of the k3 KL estimate ``exp(ref - logp) - (ref - logp) - 1`` added to every
            response token's loss (``ref - logp`` clamped to +-20 so ``exp`` cannot overflow). The method
            itself uses none (0.0).
        length_norm: the constant L of ``seq-mean-token-sum-norm`` (the same for every micro-batch of an update).
        token_weight: (B, T) optional per-token factor on the policy-gradient term (no gradient through it): the
            truncated importance ratio pi_old / pi_sampler when another engine (vLLM) sampled the tokens.

    Returns:
        :class:`LossOutput` with the scalar loss and metrics ``pg_loss``, ``clip_fraction`` (over tokens
        that took the PPO loss, guided fallbacks included), ``ratio_mean`` (over all response tokens),
        ``shaped_token_fraction`` (shaped / response tokens), ``shaped_weight_mean`` (mean gradient
        coefficient ``c`` over shaped tokens, 0.0 if none), ``shaped_weight_max`` (its largest value),
        ``fallback_token_count`` and, when
        ``ref_logp`` is given, ``kl`` (token mean of the k3 estimate).

    Inputs at padding positions may hold anything (including -inf or NaN): they are replaced by 0 before
    any arithmetic, so neither the loss nor the gradient can pick up NaN from padding. Computation runs in
    at least float32, since ``pi + 0.001`` is not representable in bfloat16 for most pi.
    """
    shaping_fn = lookup(SHAPINGS, "shaping", shaping)
    lookup(AGGREGATIONS, "aggregation", aggregation)
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    named = {"old_logp": old_logp, "response_mask": response_mask, "guided_mask": guided_mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    if token_weight is not None:
        named["token_weight"] = token_weight
    for name, tensor in named.items():
        if tensor.shape != logp.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(logp.shape)} like logp"
            )
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages must have shape ({logp.shape[0]},), got {tuple(advantages.shape)}")
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if kl_coef < 0.0 or math.isnan(kl_coef):
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0.0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")

    dtype = torch.promote_types(logp.dtype, torch.float32)
    mask = response_mask != 0
    guided = (guided_mask != 0) & mask

    def clean(t: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, t.to(dtype), 0.0)

    logp_c = clean(logp)
    old_c = clean(old_logp.detach())
    adv = advantages.detach().to(dtype).unsqueeze(-1)

    ppo, ratio, clipped = ppo_clip_loss(logp_c, old_c, adv, clip_low, clip_high)

    terms = shaping_fn(logp_c, adv)
    if terms is None:
        shaped = torch.zeros_like(mask)
        fallback = torch.zeros_like(mask)
        pg_mat = ppo
        shaped_weight_mean = shaped_weight_max = 0.0
    else:
        shaped = guided & ~terms.fallback
        fallback = guided & terms.fallback
        pg_mat = torch.where(shaped, terms.loss, ppo)
        shaped_weight_mean = _masked_mean(terms.weight, shaped)
        shaped_weight_max = float(torch.where(shaped, terms.weight, 0.0).max().item()) if bool(shaped.any()) else 0.0
    ppo_tokens = mask & ~shaped

    if token_weight is not None:
        pg_mat = pg_mat * clean(token_weight.detach())
    pg_loss = aggregate(pg_mat, mask, aggregation, normalizer, length_norm)
    loss = pg_loss
    metrics: dict[str, float] = {
        "pg_loss": float(pg_loss.detach().item()),
        "clip_fraction": _masked_mean(clipped.to(dtype), ppo_tokens),
        "ratio_mean": _masked_mean(ratio.detach(), mask),
        "shaped_token_fraction": _masked_mean(shaped.to(dtype), mask),
        "shaped_weight_mean": shaped_weight_mean,
        "shaped_weight_max": shaped_weight_max,
        "fallback_token_count": float(fallback.sum().item()),
    }
    counts = {"n_tokens": float(mask.sum().item()), "n_ppo": float(ppo_tokens.sum().item()),
              "n_shaped": float(shaped.sum().item())}

    if ref_logp is not None:
        delta = (clean(ref_logp.detach()) - logp_c).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl_mat = delta.exp() - delta - 1.0
        metrics["kl"] = _masked_mean(kl_mat.detach(), mask)
        if kl_coef > 0.0:
            loss = loss + kl_coef * aggregate(kl_mat, mask, aggregation, normalizer, length_norm)

    return LossOutput(loss=loss, metrics=metrics, counts=counts)
