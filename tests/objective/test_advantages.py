"""Advantage estimators against numbers worked out by hand (docs/method.md, step 6)."""

from __future__ import annotations

import math

import pytest
import torch

from thinktuning.objective.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage

# Group [1, 0, 0, 1, 0]:
#   mean = 2 / 5 = 0.4
#   deviations: +0.6, -0.4, -0.4, +0.6, -0.4
#   sum of squares = 2 * 0.36 + 3 * 0.16 = 0.72 + 0.48 = 1.2
#   unbiased variance = 1.2 / (5 - 1) = 0.3  ->  std = sqrt(0.3) ~= 0.5477
GROUP = [1.0, 0.0, 0.0, 1.0, 0.0]
STD = math.sqrt(0.3)


def test_grpo_with_std_hand_computed() -> None:
    adv = compute_advantages(torch.tensor(GROUP, dtype=torch.float64), group_size=5)
    # correct: 0.6 / (sqrt(0.3) + 1e-6) ~= 1.0954;  wrong: -0.4 / (sqrt(0.3) + 1e-6) ~= -0.7303
    hi, lo = 0.6 / (STD + 1e-6), -0.4 / (STD + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([hi, lo, lo, hi, lo], dtype=torch.float64))
    assert adv[0].item() == pytest.approx(1.0954, abs=1e-4)
    assert adv[1].item() == pytest.approx(-0.7303, abs=1e-4)


def test_grpo_uses_unbiased_std_not_population_std() -> None:
    # population std would be sqrt(1.2 / 5) = sqrt(0.24) ~= 0.4899 -> 0.6 / 0.4899 ~= 1.2247, not 1.0954
    adv = compute_advantages(torch.tensor(GROUP), group_size=5, eps=0.0)
    assert adv[0].item() == pytest.approx(0.6 / math.sqrt(0.3), rel=1e-6)
    assert adv[0].item() != pytest.approx(0.6 / math.sqrt(0.24), rel=1e-3)


def test_grpo_without_std_is_centred_reward() -> None:
    adv = compute_advantages(torch.tensor(GROUP, dtype=torch.float64), group_size=5, normalize_std=False)
    # r - 0.4
    torch.testing.assert_close(adv, torch.tensor([0.6, -0.4, -0.4, 0.6, -0.4], dtype=torch.float64))


def test_identical_rewards_give_zeros_and_groups_are_independent() -> None:
    # group 1: all ones -> mean 1, std 0 -> 0 / (0 + 1e-6) = 0
    # group 2: all zeros -> 0
    # group 3: [1, 0] -> mean 0.5, unbiased std = sqrt((0.25 + 0.25) / 1) = sqrt(0.5) ~= 0.7071
    #          -> +-0.5 / (0.7071 + 1e-6) ~= +-0.7071
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    adv = compute_advantages(rewards, group_size=2)
    x = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, 0.0, 0.0, x, -x], dtype=torch.float64))
    assert not torch.isnan(adv).any()


def test_rloo_leave_one_out_baseline() -> None:
    # r=1: others [0, 0, 1, 0] -> mean 0.25 -> 1 - 0.25 = 0.75
    # r=0: others [1, 0, 1, 0] -> mean 0.5  -> 0 - 0.5  = -0.5
    # (= 5/4 * (r - 0.4): 5/4 * 0.6 = 0.75, 5/4 * -0.4 = -0.5)
    adv = compute_advantages(torch.tensor(GROUP, dtype=torch.float64), group_size=5, estimator="rloo")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.5, -0.5, 0.75, -0.5], dtype=torch.float64))


def test_rloo_ignores_normalize_std() -> None:
    r = torch.tensor(GROUP)
    a = compute_advantages(r, 5, estimator="rloo", normalize_std=True)
    b = compute_advantages(r, 5, estimator="rloo", normalize_std=False)
    torch.testing.assert_close(a, b)


def test_integer_rewards_are_promoted_to_float() -> None:
    adv = compute_advantages(torch.tensor([1, 0, 0, 1, 0]), group_size=5, normalize_std=False)
    assert torch.is_floating_point(adv)
    torch.testing.assert_close(adv, torch.tensor([0.6, -0.4, -0.4, 0.6, -0.4]))


def test_output_shape_matches_input() -> None:
    adv = compute_advantages(torch.zeros(15), group_size=5)
    assert adv.shape == (15,)


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(7), 5, "divisible"),
        (torch.zeros(4), 1, "group_size"),
        (torch.zeros(4), 0, "group_size"),
        (torch.zeros(2, 5), 5, "1-D"),
    ],
)
def test_validation_errors(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_advantages(rewards, group_size)


def test_unknown_estimator_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="grpo") as info:
        compute_advantages(torch.zeros(4), 2, estimator="ppo-gae")
    assert "rloo" in str(info.value)
    assert "ppo-gae" in str(info.value)


def test_registry_holds_exactly_the_documented_estimators() -> None:
    assert set(ADVANTAGE_ESTIMATORS) >= {"grpo", "rloo"}


def test_register_custom_estimator_and_reject_duplicates() -> None:
    name = "test-max-baseline"
    try:

        @register_advantage(name)
        def max_baseline(grouped: torch.Tensor, *, normalize_std: bool, eps: float) -> torch.Tensor:
            return grouped - grouped.max(dim=-1, keepdim=True).values

        # [1, 0, 0, 1, 0] - 1
        adv = compute_advantages(torch.tensor(GROUP), 5, estimator=name)
        torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, -1.0, 0.0, -1.0]))
        with pytest.raises(ValueError, match="already registered"):
            register_advantage(name)(max_baseline)
    finally:
        ADVANTAGE_ESTIMATORS.pop(name, None)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("rewards", [[1.3] * 8, [1.94] * 5, [0.0] * 4, [0.7, 0.7, 0.7]])
def test_all_equal_groups_get_exactly_zero(estimator, rewards):
    # mean([1.3] * 8) is 1.3 only up to rounding; that rounding divided by std + 1e-6 (std 0) gave -0.1057 per row
    adv = compute_advantages(torch.tensor(rewards), len(rewards), estimator)
    assert adv.tolist() == [0.0] * len(rewards)


def test_an_equal_group_beside_a_mixed_group_keeps_the_mixed_groups_advantages():
    # group 1: [1.3] * 4 -> 0 exactly; group 2: [1, 0, 0, 0]: mean 0.25, unbiased std 0.5 -> 1.5, -0.5, -0.5, -0.5
    adv = compute_advantages(torch.tensor([1.3] * 4 + [1.0, 0.0, 0.0, 0.0]), 4)
    assert adv[:4].tolist() == [0.0] * 4
    assert adv[4:].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
