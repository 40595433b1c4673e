"""The shaped objective on guided tokens, and its registry.

``docs/method.md``, step 7. Guided tokens (mostly the teacher's feedback spliced into a student rollout) were not
sampled from the student, so a PPO ratio to pi_old would be meaningless and clipping would throw most of
their signal away. They instead get a *shaped* objective whose gradient is a plain likelihood gradient
times a coefficient ``c``:

    grad = c * A * grad log pi

* ``"aas"``: Advantage-Aware Shaping, ``-A * pi / (sg(pi) + gamma(A))``, ``c = pi / (pi + gamma)``.
  ``gamma`` is tiny (|gamma| <= 0.001), so ``c`` is ~1 except for rare tokens, where a positive gamma
  (A > 0) damps and a negative gamma (A < 0) boosts the update.
* ``"aas-recipe"``: the same with the constant ``gamma = -0.001`` that the authors' recipe produces. Hazard, kept
  to reproduce the recipe: for pi just above 0.001 the weight ``pi / (pi - 0.001)`` is unbounded (about 101 at
  pi = 0.00101), so one rare token can dominate an update; every step logs the largest shaped weight as
  ``loss/shaped_weight_max`` (see ``docs/method.md``).
* ``"luffy"``: LUFFY's ``-A * pi / (pi + 0.1)`` without stop-gradient, ``c = 0.1 * pi / (pi + 0.1)**2``.
* ``"none"``: guided tokens are treated exactly like the student's own tokens (PPO-clip).

Each shaping is a registered pure function of tensors, so an ablation is one config value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from thinktuning.objective.registry import register

F = TypeVar("F", bound=Callable[..., object])


# ---------------------------------------------------------------------------------------------------------
# constants from the recipe (docs/method.md, step 7)
# ---------------------------------------------------------------------------------------------------------

AAS_GAMMA_MAX = 0.001
"""|gamma| bound of Advantage-Aware Shaping; gamma = +0.001 at A = +4 and -0.001 at A = -4."""
AAS_ADV_SCALE = 4.0
"""Advantage at which gamma saturates (the recipe's interpolation spans A in [-4, +4])."""
AAS_RECIPE_GAMMA = -0.001
"""What the recipe's inverted clamp ``clamp(gamma, 0.001, -0.001)`` returns for every A."""
AAS_GUARD_LOW = 1.0001
"""Denominator ``sg(pi) / 1.0001`` used when ``sg(pi) + gamma <= 0`` (the recipe's ``.detach()/(1.0001)``)."""
AAS_GUARD_HIGH = 0.9999
"""Denominator ``sg(pi) / 0.9999`` used when ``sg(pi) + gamma > 1`` (the recipe's ``.detach()/(0.9999)``)."""
AAS_FALLBACK_PROB = 0.01
"""Guided tokens with A < 0 and pi below this take the PPO loss instead of the shaped one."""
LUFFY_GAMMA = 0.1
"""LUFFY's shaping constant in ``pi / (pi + 0.1)``."""


# ---------------------------------------------------------------------------------------------------------
# gamma(A)
# ---------------------------------------------------------------------------------------------------------


def aas_gamma(advantages: torch.Tensor, mode: str = "interpolate") -> torch.Tensor:
    """The Advantage-Aware Shaping offset gamma(A), elementwise.

    ``"interpolate"`` (the method as described): ``gamma(A) = 0.001 - 0.002 * (4 - A) / 8``, clamped to
    ``[-0.001, 0.001]``; +0.001 at A = +4, 0 at A = 0, -0.001 at A = -4. A positive gamma damps the update
    of rare tokens in rollouts that did well (they are already being pushed up), a negative gamma boosts
    the push-down of rare tokens in rollouts that did badly.

    ``"recipe"``: the constant -0.001. The authors' code clamps with ``min=0.001, max=-0.001``; since
    ``torch.clamp`` applies max last when min > max, every value comes out -0.001. Offered so that the
    recipe as written can be reproduced.
    """
    if mode == "interpolate":
        gamma = AAS_GAMMA_MAX - 2 * AAS_GAMMA_MAX * (AAS_ADV_SCALE - advantages) / (2 * AAS_ADV_SCALE)
        return gamma.clamp(-AAS_GAMMA_MAX, AAS_GAMMA_MAX)
    if mode == "recipe":
        return torch.full_like(advantages, AAS_RECIPE_GAMMA)
    raise ValueError(f"unknown aas_gamma mode {mode!r}; expected 'interpolate' or 'recipe'")


# ---------------------------------------------------------------------------------------------------------
# shapings
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ShapedTerms:
    """What a shaping returns for every (B, T) position; the caller keeps only guided response tokens.

    Attributes:
        loss: per-token shaped loss, differentiable w.r.t. ``logp``.
        weight: the coefficient ``c`` in ``grad = c * A * grad log pi`` (detached; for metrics).
        fallback: bool, True where the shaping declines a token, which then takes the PPO loss.
    """

    loss: torch.Tensor
    weight: torch.Tensor
    fallback: torch.Tensor


Shaping = Callable[[torch.Tensor, torch.Tensor], ShapedTerms | None]

SHAPINGS: dict[str, Shaping] = {}
"""name -> ``fn(logp (B, T), advantages (B, 1)) -> ShapedTerms | None``; None means "use PPO"."""


def register_shaping(name: str) -> Callable[[F], F]:
    """Decorator filing a guided-token shaping under ``name`` in :data:`SHAPINGS`."""
    return register(SHAPINGS, "shaping", name)  # type: ignore[arg-type]


def _aas_terms(logp: torch.Tensor, advantages: torch.Tensor, gamma_mode: str) -> ShapedTerms:
    """``-A * pi / (sg(pi) + gamma(A))`` with the recipe's guards and negative-advantage fallback.

    The forward value is ~ ``-A`` (the shaped ratio is ~1); what matters is the gradient,
    ``-A * pi / denom * grad log pi``, because only the numerator carries gradient.

    Guards, as in the recipe: ``denom <= 0`` -> ``sg(pi) / 1.0001`` and ``denom > 1`` ->
    ``sg(pi) / 0.9999`` (a division, as the recipe's code has it). With the interpolated gamma the first guard
    can only be reached for A < 0 and pi <= 0.001, which the fallback already sends to PPO; it matters for the
    constant recipe gamma (A >= 0, pi <= 0.001). A guided token with A < 0 and pi < 0.01 falls back to PPO: pushing
    down an already-unlikely token with an unclipped, gamma-boosted gradient is what the recipe avoids.

    The denominator is additionally floored at the dtype's smallest normal number, so a probability that
    underflows to exactly 0 yields a loss and gradient of 0 instead of 0/0 = NaN (which would poison the
    backward pass even on tokens that end up taking the PPO branch).
    """
    pi = logp.exp()
    pi_sg = pi.detach()
    gamma = aas_gamma(advantages, gamma_mode)
    denom = pi_sg + gamma
    denom = torch.where(
        denom <= 0, pi_sg / AAS_GUARD_LOW, torch.where(denom > 1, pi_sg / AAS_GUARD_HIGH, denom)
    )
    denom = denom.clamp_min(torch.finfo(denom.dtype).tiny)
    loss = -advantages * pi / denom
    weight = pi_sg / denom
    fallback = (advantages < 0) & (pi_sg < AAS_FALLBACK_PROB)
    return ShapedTerms(loss=loss, weight=weight, fallback=fallback)


@register_shaping("aas")
def aas_shaping(logp: torch.Tensor, advantages: torch.Tensor) -> ShapedTerms:
    """Advantage-Aware Shaping with gamma interpolated in A (the method as the paper describes it)."""
    return _aas_terms(logp, advantages, "interpolate")


@register_shaping("aas-recipe")
def aas_recipe_shaping(logp: torch.Tensor, advantages: torch.Tensor) -> ShapedTerms:
    """Advantage-Aware Shaping with the recipe's effective constant gamma = -0.001 (reproduces its bug)."""
    return _aas_terms(logp, advantages, "recipe")


@register_shaping("luffy")
def luffy_shaping(logp: torch.Tensor, advantages: torch.Tensor) -> ShapedTerms:
    """LUFFY's ``-A * pi / (pi + 0.1)``, gradient flowing through numerator *and* denominator.

    ``d/dpi [pi / (pi + 0.1)] = 0.1 / (pi + 0.1)^2`` and ``grad pi = pi * grad log pi``, hence
    ``c = 0.1 * pi / (pi + 0.1)^2``: it emphasises low-probability tokens relative to likely ones. LUFFY
    has no guards and no fallback; ``pi + 0.1 >= 0.1`` is always safe.
    """
    pi = logp.exp()
    loss = -advantages * pi / (pi + LUFFY_GAMMA)
    pi_sg = pi.detach()
    weight = LUFFY_GAMMA * pi_sg / (pi_sg + LUFFY_GAMMA) ** 2
    return ShapedTerms(loss=loss, weight=weight, fallback=torch.zeros_like(logp, dtype=torch.bool))


@register_shaping("none")
def no_shaping(logp: torch.Tensor, advantages: torch.Tensor) -> None:
    """Ablation: guided tokens get the same PPO-clip loss as the student's own tokens."""
    del logp, advantages
    return None
