"""Policy loss and shapings against numbers worked out by hand (docs/method.md, step 7).

Probabilities are chosen so the arithmetic is easy (pi = 0.5, old pi = 0.25 -> ratio 2, ...); every
expected value is written as the arithmetic that produces it, never as a snapshot of the code's output.
Tests run in float64 so that log/exp round trips do not blur the comparisons.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktuning.objective.loss import AGGREGATIONS, LossOutput, aggregate, policy_loss
from thinktuning.objective.shaping import SHAPINGS, aas_gamma

D = torch.float64
LN2 = math.log(2.0)


def single(
    pi: float,
    old_pi: float,
    adv: float,
    *,
    guided: bool = False,
    shaping: str = "aas",
    **kwargs: object,
) -> tuple[LossOutput, torch.Tensor]:
    """policy_loss on a batch of one rollout with one response token; returns the output and logp."""
    logp = torch.tensor([[math.log(pi)]], dtype=D, requires_grad=True)
    out = policy_loss(
        logp,
        torch.tensor([[math.log(old_pi)]], dtype=D),
        torch.tensor([adv], dtype=D),
        torch.ones(1, 1, dtype=torch.bool),
        torch.full((1, 1), guided, dtype=torch.bool),
        shaping=shaping,
        **kwargs,  # type: ignore[arg-type]
    )
    return out, logp


def grad_of(out: LossOutput, logp: torch.Tensor) -> float:
    (g,) = torch.autograd.grad(out.loss, logp)
    return float(g.item())


# ---------------------------------------------------------------------------------------------------------
# PPO branch (ordinary tokens)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pi", "old_pi", "adv", "expected", "clipped", "expected_grad"),
    [
        # ratio 0.55/0.5 = 1.1 inside [0.8, 1.2]: max(-1.1, -1.1) = -1.1; d(-A*ratio)/dlogp = -1.1
        (0.55, 0.5, 1.0, -1.1, False, -1.1),
        # ratio 0.5/0.25 = 2, A>0: max(-2, -1.2) = -1.2 -> clipped branch active, zero gradient
        (0.5, 0.25, 1.0, -1.2, True, 0.0),
        # ratio 2, A<0: max(2, 1.2) = 2 -> unclipped (PPO keeps the pessimistic side); grad = -A*ratio = 2
        (0.5, 0.25, -1.0, 2.0, False, 2.0),
        # ratio 0.25/0.5 = 0.5, A<0: max(0.5, 0.8) = 0.8 -> clipped, zero gradient
        (0.25, 0.5, -1.0, 0.8, True, 0.0),
        # ratio 0.5, A>0: max(-0.5, -0.8) = -0.5 -> unclipped; grad = -1 * 0.5
        (0.25, 0.5, 1.0, -0.5, False, -0.5),
        # ratio 2, A=+2: max(-4, -2.4) = -2.4 -> clipped
        (0.5, 0.25, 2.0, -2.4, True, 0.0),
    ],
)
def test_ppo_branch_values_clip_fraction_and_gradient(
    pi: float, old_pi: float, adv: float, expected: float, clipped: bool, expected_grad: float
) -> None:
    out, logp = single(pi, old_pi, adv)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["pg_loss"] == pytest.approx(expected, rel=1e-12)
    assert out.metrics["clip_fraction"] == (1.0 if clipped else 0.0)
    assert out.metrics["ratio_mean"] == pytest.approx(pi / old_pi, rel=1e-12)
    assert out.metrics["shaped_token_fraction"] == 0.0
    assert grad_of(out, logp) == pytest.approx(expected_grad, abs=1e-12)


def ppo_batch(guided: float = 0.0) -> dict[str, torch.Tensor]:
    """Two rollouts x two tokens.

    row 0 (A=+1): ratio 1.1 -> -1.1 (unclipped);  ratio 2   -> -1.2 (clipped)
    row 1 (A=-1): ratio 2   ->  2   (unclipped);  ratio 0.5 ->  0.8 (clipped)
    """
    return {
        "logp": torch.tensor([[0.55, 0.5], [0.5, 0.25]], dtype=D).log().requires_grad_(),
        "old_logp": torch.tensor([[0.5, 0.25], [0.25, 0.5]], dtype=D).log(),
        "advantages": torch.tensor([1.0, -1.0], dtype=D),
        "response_mask": torch.ones(2, 2, dtype=torch.bool),
        "guided_mask": torch.full((2, 2), guided, dtype=D),
    }


def test_ppo_batch_token_mean_and_fractions() -> None:
    out = policy_loss(**ppo_batch())
    # (-1.1 - 1.2 + 2 + 0.8) / 4 = 0.5 / 4 = 0.125
    assert out.loss.item() == pytest.approx(0.125, rel=1e-12)
    # 2 of 4 PPO tokens clipped
    assert out.metrics["clip_fraction"] == 0.5
    # (1.1 + 2 + 2 + 0.5) / 4 = 5.6 / 4 = 1.4
    assert out.metrics["ratio_mean"] == pytest.approx(1.4, rel=1e-12)
    assert out.metrics["shaped_weight_mean"] == 0.0
    assert out.metrics["fallback_token_count"] == 0.0
    assert "kl" not in out.metrics


def test_asymmetric_clip_range() -> None:
    # ratio 2, A=+1, clip_high=0.28: max(-2, -1.28) = -1.28
    out, _ = single(0.5, 0.25, 1.0, clip_high=0.28)
    assert out.loss.item() == pytest.approx(-1.28, rel=1e-12)
    # ratio 0.5, A=-1, clip_low=0.1: max(0.5, 0.9) = 0.9
    out, _ = single(0.25, 0.5, -1.0, clip_low=0.1)
    assert out.loss.item() == pytest.approx(0.9, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# gamma(A)
# ---------------------------------------------------------------------------------------------------------


def test_aas_gamma_interpolation_and_clamp() -> None:
    adv = torch.tensor([-10.0, -4.0, -2.0, 0.0, 1.0, 2.0, 4.0, 8.0], dtype=D)
    expected = torch.tensor(
        [
            -0.001,  # A=-10: 0.001 - 0.002 * 14/8 = -0.0025 -> clamped to -0.001
            -0.001,  # A=-4:  0.001 - 0.002 * 8/8  = -0.001
            -0.0005,  # A=-2:  0.001 - 0.002 * 6/8  = 0.001 - 0.0015 = -0.0005
            0.0,  # A=0:   0.001 - 0.002 * 4/8  = 0
            0.00025,  # A=1:   0.001 - 0.002 * 3/8  = 0.001 - 0.00075 = 0.00025
            0.0005,  # A=2:   0.001 - 0.002 * 2/8  = 0.0005
            0.001,  # A=4:   0.001 - 0
            0.001,  # A=8:   0.001 - 0.002 * -4/8 = 0.002 -> clamped to 0.001
        ],
        dtype=D,
    )
    torch.testing.assert_close(aas_gamma(adv), expected, rtol=0, atol=1e-15)


def test_aas_gamma_recipe_is_constant() -> None:
    adv = torch.tensor([[-4.0, 0.0], [4.0, 100.0]], dtype=D)
    got = aas_gamma(adv, mode="recipe")
    assert got.shape == adv.shape
    torch.testing.assert_close(got, torch.full((2, 2), -0.001, dtype=D))


def test_aas_gamma_unknown_mode() -> None:
    with pytest.raises(ValueError, match="interpolate"):
        aas_gamma(torch.zeros(1), mode="linear")


# ---------------------------------------------------------------------------------------------------------
# shaped branch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pi", "adv", "gamma"),
    [
        (0.5, 4.0, 0.001),  # -4 * 0.5 / 0.501 = -2 / 0.501 ~= -3.99202
        (0.5, -4.0, -0.001),  # 4 * 0.5 / 0.499 = 2 / 0.499 ~= 4.00802
        (0.5, 2.0, 0.0005),  # -2 * 0.5 / 0.5005 ~= -1.998002
        (0.02, -1.0, -0.00025),  # pi >= 0.01, so shaped: 0.02 / 0.01975 ~= 1.012658
        (0.005, 1.0, 0.00025),  # A > 0: small pi still shaped: -0.005 / 0.00525 ~= -0.952381
    ],
)
def test_aas_shaped_forward_value(pi: float, adv: float, gamma: float) -> None:
    # old pi = 0.1 puts every ratio far outside [0.8, 1.2]: the shaped loss must not care.
    out, _ = single(pi, 0.1, adv, guided=True)
    expected = -adv * pi / (pi + gamma)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert out.metrics["shaped_token_fraction"] == 1.0
    assert out.metrics["shaped_weight_mean"] == pytest.approx(pi / (pi + gamma), rel=1e-9)
    assert out.metrics["clip_fraction"] == 0.0  # no PPO tokens at all
    assert out.metrics["fallback_token_count"] == 0.0


def test_aas_hand_values_spelled_out() -> None:
    out, _ = single(0.5, 0.25, 4.0, guided=True)
    assert out.loss.item() == pytest.approx(-3.992016, abs=1e-6)  # -2 / 0.501
    out, _ = single(0.5, 0.25, -4.0, guided=True)
    assert out.loss.item() == pytest.approx(4.008016, abs=1e-6)  # 2 / 0.499


def test_guard_denominator_not_positive() -> None:
    # recipe gamma = -0.001, A = +1, pi = 0.0005: 0.0005 - 0.001 = -0.0005 <= 0
    # -> denominator sg(pi) / 1.0001 (the recipe's `.detach()/(1.0001)`: a division)
    # -> weight pi / (pi / 1.0001) = 1.0001, loss = -A * 1.0001 = -1.0001, dL/dlog pi = -1.0001
    out, logp = single(0.0005, 0.0005, 1.0, guided=True, shaping="aas-recipe")
    assert out.loss.item() == pytest.approx(-1.0001, rel=1e-9)
    assert out.metrics["shaped_weight_mean"] == pytest.approx(1.0001, rel=1e-9)
    assert out.metrics["shaped_weight_max"] == pytest.approx(1.0001, rel=1e-9)
    assert grad_of(out, logp) == pytest.approx(-1.0001, rel=1e-9)


def test_guard_the_issue_example_in_float64() -> None:
    # the review's case, verbatim: log pi = log(0.0005), A = 1, aas-recipe: loss and gradient both -1.0001
    lp = torch.tensor([[math.log(0.0005)]], dtype=torch.float64, requires_grad=True)
    one = torch.ones(1, 1)
    out = policy_loss(lp, lp.detach(), torch.tensor([1.0], dtype=torch.float64), one, one, shaping="aas-recipe")
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-1.0001, rel=1e-12)
    assert lp.grad.item() == pytest.approx(-1.0001, rel=1e-12)


def test_aas_recipe_hazard_is_visible_as_the_largest_shaped_weight() -> None:
    # pi = 0.00101, recipe gamma = -0.001: weight pi / (pi - 0.001) = 0.00101 / 0.00001 = 101
    out, _ = single(0.00101, 0.00101, 1.0, guided=True, shaping="aas-recipe")
    assert out.metrics["shaped_weight_max"] == pytest.approx(101.0, rel=1e-3)


def test_guard_denominator_above_one() -> None:
    # gamma(4) = +0.001, pi = 0.9995: 0.9995 + 0.001 = 1.0005 > 1
    # -> denominator 0.9995 / 0.9999 -> loss = -4 * 0.9995 / (0.9995 / 0.9999) = -4 * 0.9999 = -3.9996
    out, logp = single(0.9995, 0.9995, 4.0, guided=True)
    assert out.loss.item() == pytest.approx(-4 * 0.9999, rel=1e-9)
    assert grad_of(out, logp) == pytest.approx(-4 * 0.9999, rel=1e-9)
    # without the guard it would have been -4 * 0.9995 / 1.0005 ~= -3.996
    assert out.loss.item() != pytest.approx(-4 * 0.9995 / 1.0005, rel=1e-6)


@pytest.mark.parametrize("shaping", ["aas", "aas-recipe"])
def test_negative_advantage_rare_token_falls_back_to_ppo(shaping: str) -> None:
    # A = -1, pi = 0.005 < 0.01 -> PPO: ratio 0.005 / 0.01 = 0.5, max(0.5, 0.8) = 0.8 (clipped)
    out, logp = single(0.005, 0.01, -1.0, guided=True, shaping=shaping)
    assert out.loss.item() == pytest.approx(0.8, rel=1e-9)
    assert out.metrics["fallback_token_count"] == 1.0
    assert out.metrics["shaped_token_fraction"] == 0.0
    assert out.metrics["shaped_weight_mean"] == 0.0
    assert out.metrics["clip_fraction"] == 1.0
    assert grad_of(out, logp) == 0.0  # clipped PPO branch


def test_fallback_unclipped_ppo_value() -> None:
    # A = -1, pi = 0.005, old = 0.005: ratio 1 -> max(1, 1) = 1, gradient -A * ratio = 1
    out, logp = single(0.005, 0.005, -1.0, guided=True)
    assert out.loss.item() == pytest.approx(1.0, rel=1e-9)
    assert grad_of(out, logp) == pytest.approx(1.0, rel=1e-9)
    assert out.metrics["clip_fraction"] == 0.0


@pytest.mark.parametrize(
    ("pi", "adv", "gamma"),
    [
        (0.5, 2.0, 0.0005),  # d/dlogp = -2 * 0.5 / 0.5005 ~= -1.998002
        (0.3, -3.0, -0.00075),  # gamma(-3) = 0.001 - 0.002 * 7/8; d/dlogp = 3 * 0.3 / 0.29925 ~= 3.007519
        (0.5, 0.0, 0.0),  # A = 0 -> no gradient at all
    ],
)
def test_aas_gradient_is_likelihood_gradient_times_pi_over_pi_plus_gamma(
    pi: float, adv: float, gamma: float
) -> None:
    # loss = -A * pi / sg(pi + gamma); d pi / d logp = pi  ->  d loss / d logp = -A * pi / (pi + gamma)
    out, logp = single(pi, 0.9, adv, guided=True)
    assert grad_of(out, logp) == pytest.approx(-adv * pi / (pi + gamma), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("pi", "adv"),
    [
        (0.5, 2.0),  # forward -2 * 0.5 / 0.6 ~= -1.666667; grad -2 * 0.1 * 0.5 / 0.36 ~= -0.277778
        (0.3, -3.0),  # forward 3 * 0.3 / 0.4 = 2.25; grad 3 * 0.1 * 0.3 / 0.16 = 0.5625
        (0.005, -1.0),  # LUFFY has no fallback: forward 0.005 / 0.105 ~= 0.047619
    ],
)
def test_luffy_forward_gradient_and_weight(pi: float, adv: float) -> None:
    out, logp = single(pi, 0.9, adv, guided=True, shaping="luffy")
    assert out.loss.item() == pytest.approx(-adv * pi / (pi + 0.1), rel=1e-9)
    # no stop-gradient: d/dlogp [pi / (pi + 0.1)] = pi * 0.1 / (pi + 0.1)^2
    assert grad_of(out, logp) == pytest.approx(-adv * 0.1 * pi / (pi + 0.1) ** 2, rel=1e-9)
    assert out.metrics["shaped_weight_mean"] == pytest.approx(0.1 * pi / (pi + 0.1) ** 2, rel=1e-9)
    assert out.metrics["fallback_token_count"] == 0.0


def test_luffy_hand_values_spelled_out() -> None:
    out, logp = single(0.5, 0.5, 2.0, guided=True, shaping="luffy")
    assert out.loss.item() == pytest.approx(-5 / 3, rel=1e-9)  # -2 * 0.5 / 0.6
    assert grad_of(out, logp) == pytest.approx(-0.1 / 0.36, rel=1e-9)  # -2 * 0.1 * 0.5 / 0.6^2


def test_shaping_none_equals_ppo() -> None:
    guided = policy_loss(**ppo_batch(guided=1.0), shaping="none")
    # the hand value of the all-PPO batch: 0.125
    assert guided.loss.item() == pytest.approx(0.125, rel=1e-12)
    assert guided.metrics["clip_fraction"] == 0.5
    assert guided.metrics["shaped_token_fraction"] == 0.0
    assert guided.metrics["fallback_token_count"] == 0.0

    a, b = ppo_batch(guided=1.0), ppo_batch(guided=0.0)
    out_none = policy_loss(**a, shaping="none")
    out_ppo = policy_loss(**b, shaping="aas")
    assert out_none.loss.item() == out_ppo.loss.item()
    (ga,) = torch.autograd.grad(out_none.loss, a["logp"])
    (gb,) = torch.autograd.grad(out_ppo.loss, b["logp"])
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_mixed_batch_metrics() -> None:
    # row 0 (A=+1): ordinary ratio 2 -> -1.2 (clipped); guided pi=0.5 -> -0.5 / 0.50025
    # row 1 (A=-1): ordinary ratio 0.5 -> 0.8 (clipped); guided pi=0.005 -> fallback PPO, ratio 1 -> 1
    logp = torch.tensor([[0.5, 0.5], [0.25, 0.005]], dtype=D).log().requires_grad_()
    old = torch.tensor([[0.25, 0.5], [0.5, 0.005]], dtype=D).log()
    out = policy_loss(
        logp,
        old,
        torch.tensor([1.0, -1.0], dtype=D),
        torch.ones(2, 2),
        torch.tensor([[0, 1], [0, 1]]),
    )
    # gamma(+1) = 0.00025; (-1.2 - 0.5/0.50025 + 0.8 + 1) / 4
    expected = (-1.2 - 0.5 / 0.50025 + 0.8 + 1.0) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert out.metrics["shaped_token_fraction"] == 0.25  # 1 shaped of 4 response tokens
    assert out.metrics["fallback_token_count"] == 1.0
    # PPO tokens: two clipped ordinary tokens + one unclipped fallback -> 2/3
    assert out.metrics["clip_fraction"] == pytest.approx(2 / 3)
    assert out.metrics["shaped_weight_mean"] == pytest.approx(0.5 / 0.50025, rel=1e-9)


# ---------------------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------------------


def test_k3_kl_term() -> None:
    logp = torch.tensor([[math.log(0.5)]], dtype=D, requires_grad=True)
    out = policy_loss(
        logp,
        logp.detach().clone(),
        torch.tensor([1.0], dtype=D),
        torch.ones(1, 1),
        torch.zeros(1, 1),
        ref_logp=torch.tensor([[math.log(0.25)]], dtype=D),
        kl_coef=0.1,
    )
    # ref - logp = log(0.25 / 0.5) = -ln 2 -> k3 = 0.5 + ln 2 - 1 ~= 0.193147
    kl = 0.5 + LN2 - 1
    # pg: ratio 1, A=+1 -> -1; total = -1 + 0.1 * kl ~= -0.980685
    assert out.metrics["kl"] == pytest.approx(kl, rel=1e-12)
    assert out.metrics["pg_loss"] == pytest.approx(-1.0, rel=1e-12)
    assert out.loss.item() == pytest.approx(-1 + 0.1 * kl, rel=1e-12)
    # d k3 / d logp = -exp(ref - logp) + 1 = 1 - 0.5 = 0.5; d pg / d logp = -A * ratio = -1
    # total: -1 + 0.1 * 0.5 = -0.95
    (g,) = torch.autograd.grad(out.loss, logp)
    assert g.item() == pytest.approx(-0.95, rel=1e-12)


def test_kl_reported_but_not_added_when_coef_zero() -> None:
    logp = torch.tensor([[math.log(0.5)]], dtype=D)
    out = policy_loss(
        logp,
        logp,
        torch.tensor([1.0], dtype=D),
        torch.ones(1, 1),
        torch.zeros(1, 1),
        ref_logp=torch.tensor([[math.log(0.25)]], dtype=D),
    )
    assert out.loss.item() == pytest.approx(-1.0, rel=1e-12)
    assert out.metrics["kl"] == pytest.approx(0.5 + LN2 - 1, rel=1e-12)


def test_kl_coef_without_ref_is_an_error() -> None:
    with pytest.raises(ValueError, match="ref_logp"):
        single(0.5, 0.5, 1.0, kl_coef=0.1)


# ---------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------

LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]], dtype=D)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)


def test_aggregate_token_mean() -> None:
    # (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert aggregate(LOSS_MAT, MASK, "token-mean").item() == pytest.approx(2.5)
    # explicit normalizer: 10 / 8 = 1.25
    assert aggregate(LOSS_MAT, MASK, "token-mean", normalizer=8).item() == pytest.approx(1.25)


def test_aggregate_seq_mean_token_mean() -> None:
    # row means: (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4 -> (2 + 4) / 2 = 3
    assert aggregate(LOSS_MAT, MASK, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # normalizer = 4 sequences: (2 + 4) / 4 = 1.5
    assert aggregate(LOSS_MAT, MASK, "seq-mean-token-mean", normalizer=4).item() == pytest.approx(1.5)


def test_seq_mean_token_sum_norm_does_not_depend_on_micro_batching() -> None:
    # rows of 2 and 6 tokens, A = 1, every log-prob -1 (so every PPO token loss is -1 with ratio 1):
    # one constant L = 8 for the update: row sums -2 and -6 -> (-2/8 - 6/8) / 2 sequences = -0.5
    # d/dlogp of the first token: -A * ratio / L / 2 = -1/16 = -0.0625, whether split or not
    lens = (2, 6)

    def run(groups):
        total, grads = 0.0, []
        for rows in groups:
            width = max(lens[i] for i in rows)
            lp = torch.full((len(rows), width), -1.0, requires_grad=True)
            mask = torch.tensor([[1.0] * lens[i] + [0.0] * (width - lens[i]) for i in rows])
            out = policy_loss(lp, lp.detach(), torch.ones(len(rows)), mask, torch.zeros_like(mask),
                              aggregation="seq-mean-token-sum-norm", normalizer=2, length_norm=8)
            out.loss.backward()
            total += out.loss.item()
            grads += [lp.grad[j, 0].item() for j in range(len(rows))]
        return total, grads

    whole, split, reversed_ = run([[0, 1]]), run([[0], [1]]), run([[1], [0]])
    assert whole[0] == pytest.approx(-0.5) and split[0] == pytest.approx(-0.5) and reversed_[0] == pytest.approx(-0.5)
    assert whole[1] == pytest.approx([-0.0625, -0.0625])
    assert split[1] == pytest.approx([-0.0625, -0.0625])


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_every_aggregation_gives_the_same_gradient_for_any_split_order_or_skip(aggregation) -> None:
    """Random rows; the update's normaliser (tokens or sequences of the mini-batch) and one length constant."""
    gen = torch.Generator().manual_seed(0)
    n, lens = 6, [3, 7, 1, 5, 2, 4]
    base = [torch.rand(k, generator=gen).log() for k in lens]
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.0, 0.0])
    guided = [torch.rand(k, generator=gen) > 0.5 for k in lens]
    norm = float(sum(lens)) if aggregation == "token-mean" else float(n)

    def grads(groups):
        leaves = [b.clone().requires_grad_(True) for b in base]
        for rows in groups:
            width = max(lens[i] for i in rows)
            lp = torch.stack([torch.cat([leaves[i], torch.zeros(width - lens[i])]) for i in rows])
            mask = torch.tensor([[1.0] * lens[i] + [0.0] * (width - lens[i]) for i in rows])
            gm = torch.stack([torch.cat([guided[i].float(), torch.zeros(width - lens[i])]) for i in rows])
            out = policy_loss(lp, lp.detach() + 0.1, adv[rows], mask, gm, aggregation=aggregation,
                              normalizer=norm, length_norm=16.0)
            out.loss.backward()
        return [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]

    whole = grads([list(range(n))])
    for groups in ([[0, 1, 2], [3, 4, 5]], [[5, 3], [1], [0, 4, 2]], [[0, 1, 3, 4]]):  # the last skips A = 0 rows
        for a, b in zip(whole, grads(groups), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_micro_batch_metrics_combine_to_one_calls_metrics() -> None:
    # four rows of two tokens, A = 1, log-probs 0: token-mean over 8 tokens, each micro-batch divided by 8:
    # two micro-batches of 4 tokens each give pg_loss -0.5 and -0.5, which sum to the one-call -1.0
    from thinktuning.objective.loss import combine_micro_batches

    def call(rows):
        lp = torch.zeros(rows, 2)
        return policy_loss(lp, lp, torch.ones(rows), torch.ones(rows, 2), torch.zeros(rows, 2), normalizer=8)

    one = call(4)
    halves = [call(2), call(2)]
    combined = combine_micro_batches([h.metrics for h in halves], [h.counts for h in halves])
    assert one.metrics["pg_loss"] == pytest.approx(-1.0)
    assert [h.metrics["pg_loss"] for h in halves] == pytest.approx([-0.5, -0.5])
    assert combined == pytest.approx(one.metrics)


def test_aggregate_seq_mean_token_sum_norm() -> None:
    # row sums 6 and 4, each divided by T = 3 columns: 2 and 4/3 -> (2 + 4/3) / 2 = 10/6 ~= 1.666667
    assert aggregate(LOSS_MAT, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6)
    # normalizer = 4: (2 + 4/3) / 4 = 10/12
    got = aggregate(LOSS_MAT, MASK, "seq-mean-token-sum-norm", normalizer=4).item()
    assert got == pytest.approx(10 / 12)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_ignores_nan_and_inf_in_padding(mode: str) -> None:
    dirty = LOSS_MAT.clone()
    dirty[1, 1] = float("nan")
    dirty[1, 2] = float("inf")
    torch.testing.assert_close(aggregate(dirty, MASK, mode), aggregate(LOSS_MAT, MASK, mode))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_empty_mask_is_zero_with_finite_grad(mode: str) -> None:
    x = LOSS_MAT.clone().requires_grad_()
    got = aggregate(x, torch.zeros(2, 3), mode)
    assert got.item() == 0.0
    (g,) = torch.autograd.grad(got, x)
    assert torch.equal(g, torch.zeros_like(g))


def test_aggregate_accepts_float_mask() -> None:
    assert aggregate(LOSS_MAT, MASK.to(D), "token-mean").item() == pytest.approx(2.5)


def test_aggregate_errors() -> None:
    with pytest.raises(ValueError, match="token-mean") as info:
        aggregate(LOSS_MAT, MASK, "sum")
    assert "seq-mean-token-sum-norm" in str(info.value)
    with pytest.raises(ValueError, match="normalizer"):
        aggregate(LOSS_MAT, MASK, "token-mean", normalizer=0)
    with pytest.raises(ValueError, match="shape"):
        aggregate(LOSS_MAT, MASK[:, :2], "token-mean")


def test_registries_hold_the_documented_names() -> None:
    assert set(SHAPINGS) >= {"aas", "aas-recipe", "luffy", "none"}
    assert set(AGGREGATIONS) >= {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}


def test_micro_batches_with_token_normalizer_sum_to_full_token_mean_by_hand() -> None:
    # row 0: A=+1, one token, ratio 1.1 -> -1.1, then padding
    # row 1: A=-1, two tokens, ratio 2 -> 2 and 2
    # full token-mean: (-1.1 + 2 + 2) / 3 = 2.9 / 3 ~= 0.966667
    # micro-batches with normalizer 3: -1.1 / 3 + 4 / 3 = 2.9 / 3
    # (without it: -1.1 / 1 + 4 / 2 = 0.9, a different, length-biased objective)
    logp = torch.tensor([[0.55, 0.3], [0.5, 0.5]], dtype=D).log()
    old = torch.tensor([[0.5, 0.9], [0.25, 0.25]], dtype=D).log()
    adv = torch.tensor([1.0, -1.0], dtype=D)
    mask = torch.tensor([[1, 0], [1, 1]])
    guided = torch.zeros(2, 2)
    full = policy_loss(logp, old, adv, mask, guided)
    assert full.loss.item() == pytest.approx(2.9 / 3, rel=1e-12)
    parts = [
        policy_loss(
            logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], guided[i : i + 1], normalizer=3
        )
        for i in range(2)
    ]
    assert parts[0].loss.item() == pytest.approx(-1.1 / 3, rel=1e-12)
    assert parts[1].loss.item() == pytest.approx(4 / 3, rel=1e-12)
    assert sum(p.loss.item() for p in parts) == pytest.approx(2.9 / 3, rel=1e-12)
    unnormalized = [
        policy_loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], guided[i : i + 1])
        for i in range(2)
    ]
    assert sum(p.loss.item() for p in unnormalized) == pytest.approx(0.9, rel=1e-12)


@pytest.mark.parametrize(
    ("aggregation", "shaping"),
    [
        ("token-mean", "aas"),
        ("token-mean", "luffy"),
        ("seq-mean-token-mean", "aas"),
        ("seq-mean-token-sum-norm", "aas-recipe"),
    ],
)
def test_micro_batch_losses_and_grads_add_up(aggregation: str, shaping: str) -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 6
    logp = (-torch.rand(b, t, generator=gen, dtype=D) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(b, t, generator=gen, dtype=D)
    adv = torch.tensor([1.2, -0.7, 0.0, -1.5], dtype=D)
    lengths = torch.tensor([6, 3, 5, 1])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    guided = torch.zeros(b, t, dtype=torch.bool)
    guided[1, :] = True
    guided[3, :] = True
    normalizer = float(mask.sum()) if aggregation == "token-mean" else float(b)

    full = policy_loss(logp, old, adv, mask, guided, shaping=shaping, aggregation=aggregation)
    (g_full,) = torch.autograd.grad(full.loss, logp)

    total = torch.zeros((), dtype=D)
    for rows in (slice(0, 2), slice(2, 4)):
        part = policy_loss(
            logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            guided[rows],
            shaping=shaping,
            aggregation=aggregation,
            normalizer=normalizer,
        )
        total = total + part.loss
    (g_parts,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, full.loss)
    torch.testing.assert_close(g_parts, g_full)


# ---------------------------------------------------------------------------------------------------------
# padding, empty masks, numerics, validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [float("-inf"), float("nan"), 50.0])
@pytest.mark.parametrize("shaping", ["aas", "aas-recipe", "luffy", "none"])
def test_padding_is_ignored_even_if_it_holds_garbage(shaping: str, garbage: float) -> None:
    # row 0 = [guided pi=0.5 | pad], row 1 = [ordinary ratio 2 | ordinary ratio 2]
    real_logp = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=D).log()
    old = torch.tensor([[0.5, 0.5], [0.25, 0.25]], dtype=D).log()
    adv = torch.tensor([2.0, -1.0], dtype=D)
    mask = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    guided = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)  # guided flag on padding must not count

    clean_logp = real_logp.clone().requires_grad_()
    clean = policy_loss(clean_logp, old, adv, mask, guided, shaping=shaping)

    dirty_logp = real_logp.clone()
    dirty_logp[0, 1] = garbage
    dirty_logp.requires_grad_()
    dirty_old = old.clone()
    dirty_old[0, 1] = float("nan")
    dirty = policy_loss(dirty_logp, dirty_old, adv, mask, guided, shaping=shaping, ref_logp=dirty_old)

    assert dirty.loss.item() == pytest.approx(clean.loss.item(), rel=1e-12)
    (g_dirty,) = torch.autograd.grad(dirty.loss, dirty_logp)
    (g_clean,) = torch.autograd.grad(clean.loss, clean_logp)
    assert torch.isfinite(g_dirty).all()
    assert g_dirty[0, 1].item() == 0.0
    torch.testing.assert_close(g_dirty, g_clean)
    expected_shaped = 0.0 if shaping == "none" else 1 / 3  # 1 shaped of 3 response tokens
    assert dirty.metrics["shaped_token_fraction"] == pytest.approx(expected_shaped)
    assert all(math.isfinite(v) for v in dirty.metrics.values())


def test_padding_hand_value() -> None:
    # same batch as above with aas: guided pi=0.5, A=+2 -> -2 * 0.5 / 0.5005; row 1 (A=-1, ratio 2): 2, 2
    # token-mean over 3 tokens: (-1 / 0.5005 + 4) / 3
    logp = torch.tensor([[0.5, 1e-9], [0.5, 0.5]], dtype=D).log()
    old = torch.tensor([[0.5, 0.5], [0.25, 0.25]], dtype=D).log()
    out = policy_loss(
        logp,
        old,
        torch.tensor([2.0, -1.0], dtype=D),
        torch.tensor([[1, 0], [1, 1]]),
        torch.tensor([[1, 1], [0, 0]]),
    )
    assert out.loss.item() == pytest.approx((-1 / 0.5005 + 4) / 3, rel=1e-9)


@pytest.mark.parametrize("shaping", ["aas", "aas-recipe", "luffy", "none"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_empty_response_mask_gives_zero_not_nan(shaping: str, aggregation: str) -> None:
    logp = torch.full((2, 3), -1.0, dtype=D, requires_grad=True)
    out = policy_loss(
        logp,
        logp.detach(),
        torch.tensor([1.0, -1.0], dtype=D),
        torch.zeros(2, 3),
        torch.ones(2, 3),
        shaping=shaping,
        aggregation=aggregation,
        ref_logp=logp.detach() - 1,
        kl_coef=0.1,
    )
    assert out.loss.item() == 0.0
    (g,) = torch.autograd.grad(out.loss, logp)
    assert torch.equal(g, torch.zeros_like(g))
    assert out.metrics["shaped_weight_mean"] == 0.0
    assert out.metrics["clip_fraction"] == 0.0
    assert out.metrics["ratio_mean"] == 0.0
    assert all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("shaping", ["aas", "aas-recipe", "luffy"])
def test_underflowing_probability_is_finite(shaping: str) -> None:
    # float32: exp(-200) underflows to exactly 0; with A = 0, gamma(0) = 0 so sg(pi) + gamma = 0 -> guard
    # -> 0 * 1.0001 = 0: the denominator floor keeps 0 / 0 out of the forward and backward pass.
    for adv in (0.0, 1.0, -1.0):
        logp = torch.tensor([[-200.0, -1.0]], requires_grad=True)
        out = policy_loss(
            logp, logp.detach(), torch.tensor([adv]), torch.ones(1, 2), torch.ones(1, 2), shaping=shaping
        )
        (g,) = torch.autograd.grad(out.loss, logp)
        assert torch.isfinite(out.loss)
        assert torch.isfinite(g).all()


def test_huge_ratio_does_not_overflow() -> None:
    # log ratio 150 would overflow exp in float32; A < 0 keeps the unclipped (huge) branch.
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = policy_loss(
        logp, torch.tensor([[-151.0]]), torch.tensor([-1.0]), torch.ones(1, 1), torch.zeros(1, 1)
    )
    assert torch.isfinite(out.loss)


def test_low_precision_inputs_computed_in_float32() -> None:
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.bfloat16, requires_grad=True)
    out = policy_loss(logp, logp.detach(), torch.tensor([4.0]), torch.ones(1, 1), torch.ones(1, 1))
    assert out.loss.dtype == torch.float32
    # bf16 log(0.5) is exact, so -4 * 0.5 / 0.501 holds to float32 accuracy
    assert out.loss.item() == pytest.approx(-2 / 0.501, rel=1e-5)
    out.loss.backward()
    assert logp.grad is not None and logp.grad.dtype == torch.bfloat16


def test_validation_errors() -> None:
    logp = torch.zeros(2, 3)
    ok = {
        "old_logp": torch.zeros(2, 3),
        "advantages": torch.zeros(2),
        "response_mask": torch.ones(2, 3),
        "guided_mask": torch.zeros(2, 3),
    }
    with pytest.raises(ValueError, match="luffy") as info:
        policy_loss(logp, **ok, shaping="aas-v2")
    assert "aas-recipe" in str(info.value)
    with pytest.raises(ValueError, match="token-mean"):
        policy_loss(logp, **ok, aggregation="mean")
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(logp, **{**ok, "old_logp": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="guided_mask"):
        policy_loss(logp, **{**ok, "guided_mask": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, **{**ok, "advantages": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="clip"):
        policy_loss(logp, **ok, clip_low=1.0)
    with pytest.raises(ValueError, match="kl_coef"):
        policy_loss(logp, **ok, kl_coef=-1.0)
    with pytest.raises(ValueError, match="logp"):
        policy_loss(torch.zeros(6), **{**ok, "old_logp": torch.zeros(6)})
