"""Group-relative advantage estimators (docs/method.md, step 6).

ThinkTuning scores every rollout of a prompt's group, guided ones included, against the other rollouts of
that same group, so no value network is needed. The estimators live in a small registry
(``ADVANTAGE_ESTIMATORS``) so that an ablation such as "GRPO vs. RLOO baseline" is a single config value;
a new estimator is one decorated function.

Every estimator receives the rewards already reshaped to ``(num_groups, group_size)`` and returns a tensor
of the same shape; :func:`compute_advantages` does the reshaping and the validation once, so estimators
stay tiny pure functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from thinktuning.objective.registry import lookup, register

F = TypeVar("F", bound=Callable[..., torch.Tensor])

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}
"""name -> ``fn(grouped_rewards, *, normalize_std, eps)``; in and out shape ``(num_groups, group_size)``."""


def register_advantage(name: str) -> Callable[[F], F]:
    """Decorator that files an estimator under ``name`` in :data:`ADVANTAGE_ESTIMATORS`.

    Registering the same name twice is an error rather than a silent overwrite: two modules fighting over
    one name would otherwise make an ablation run a different estimator than its config says.
    """
    return register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)  # type: ignore[arg-type]


@register_advantage("grpo")
def grpo_advantage(grouped_rewards: torch.Tensor, *, normalize_std: bool, eps: float) -> torch.Tensor:
    """GRPO: ``A_i = (r_i - mean_group) / (std_group + eps)``, or ``r_i - mean_group`` without std.

    The std is the *unbiased* (Bessel-corrected, divide by ``n - 1``) sample std, i.e. ``torch.std``'s
    default. That is what verl's and TRL's GRPO implementations use, and the recipe ThinkTuning was
    trained with is built on verl, so using it keeps advantage magnitudes comparable to the paper's.

    A group whose rewards are all equal carries no learning signal; :func:`compute_advantages` gives it exactly
    zero advantages (the centred rewards are only zero up to rounding, and rounding divided by ``eps`` is not
    small). ``eps`` keeps the division finite.
    """
    mean = grouped_rewards.mean(dim=-1, keepdim=True)
    centred = grouped_rewards - mean
    if not normalize_std:
        return centred
    std = grouped_rewards.std(dim=-1, keepdim=True, unbiased=True)
    return centred / (std + eps)


@register_advantage("rloo")
def rloo_advantage(grouped_rewards: torch.Tensor, *, normalize_std: bool, eps: float) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = r_i - mean_{j != i} r_j``.

    The baseline for a rollout excludes that rollout's own reward, which keeps the gradient estimate
    unbiased. Equivalently ``A_i = n / (n - 1) * (r_i - mean_group)``. RLOO is defined without a std
    normalisation, so ``normalize_std`` and ``eps`` are accepted (uniform estimator signature) but unused.
    """
    del normalize_std, eps  # RLOO has no std scaling by definition.
    n = grouped_rewards.shape[-1]
    total = grouped_rewards.sum(dim=-1, keepdim=True)
    baseline = (total - grouped_rewards) / (n - 1)
    return grouped_rewards - baseline


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Turn one scalar reward per rollout into one scalar advantage per rollout.

    Args:
        rewards: shape ``(num_groups * group_size,)``; the rollouts of a prompt are consecutive, which is
            the order the sampler produces them in.
        group_size: rollouts per prompt (G); at least 2, because a group-relative baseline of a single
            rollout is undefined (and the unbiased std divides by ``G - 1``).
        estimator: a name registered in :data:`ADVANTAGE_ESTIMATORS`.
        normalize_std: divide the centred rewards by the group std (GRPO); ``False`` gives the
            Dr. GRPO-style unscaled advantage.
        eps: added to the std so that zero-variance groups give zeros, not NaN.

    Returns:
        Advantages with the same shape as ``rewards`` and a floating dtype (integer rewards are promoted
        to the default float dtype, since means of 0/1 rewards are fractional).

    Raises:
        ValueError: for a non-1-D ``rewards``, ``group_size < 2``, a length not divisible by
            ``group_size``, or an unknown ``estimator`` (the message lists the registered names).
    """
    estimate = lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", estimator)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (num_groups * group_size,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group-relative baseline, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) is not divisible by group_size ({group_size})"
        )
    if not torch.is_floating_point(rewards):
        rewards = rewards.to(torch.get_default_dtype())
    grouped = rewards.reshape(-1, group_size)
    advantages = estimate(grouped, normalize_std=normalize_std, eps=eps)
    # a group whose rewards are all equal has no learning signal: exactly 0, whatever the estimator's rounding
    # (the mean of [1.3] * 8 is not exactly 1.3 in floating point, and dividing that error by std + eps ~ 1e-6
    # gave every row of the group the same spurious advantage of about -0.1)
    same = (grouped == grouped[:, :1]).all(dim=-1, keepdim=True)
    return torch.where(same, torch.zeros_like(advantages), advantages).reshape(rewards.shape)
