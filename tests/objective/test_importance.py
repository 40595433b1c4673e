"""The truncated importance correction (objective/importance.py) against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from thinktuning.objective.importance import (
    batch_importance_weights,
    importance_weights,
    mismatch_metrics,
    sampler_positions,
)


def test_importance_weights_hand_checked() -> None:
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5], [-0.5, 9.0, 9.0]])
    valid = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w, abs_sum, count = importance_weights(trainer, sampler, valid, cap=1.5)
    # exp(0.5) = 1.6487 -> capped at 1.5; exp(-1) = 0.3679; exp(-2.5) = 0.0821; invalid tokens weigh 1
    assert torch.allclose(w, torch.tensor([[1.5, math.exp(-1.0), 1.0], [math.exp(-2.5), 1.0, 1.0]]))
    assert abs_sum == pytest.approx(0.5 + 1.0 + 2.5)
    assert count == 3
    w_off, abs_off, _ = importance_weights(trainer, sampler, valid, cap=None)  # measured, not applied
    assert torch.equal(w_off, torch.ones(2, 3)) and abs_off == pytest.approx(4.0)


def test_sampler_positions_stop_at_the_first_teacher_token() -> None:
    assert sampler_positions([5, 6, 7], [0, 0, 0], 3) == 3  # unguided: every token is the sampler's
    assert sampler_positions([5, 6, 70, 71, 8], [0, 0, 1, 1, 0], 4) == 2  # spliced after 2 kept tokens
    assert sampler_positions([5, 6], [0, 0], 5) == 2  # response cut shorter than what was sampled
    assert sampler_positions([5, 6, 7], [0, 0, 0], 0) == 0  # no sampler log-probs (transformers path)


def test_a_micro_batch_weighs_only_the_tokens_the_other_engine_sampled() -> None:
    # row 0: unguided, 3 sampled tokens; row 1: 2 student tokens kept, then teacher tokens; row 2: trainer's own
    trainer = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-2.0, -2.0, -1.0, -1.0], [-1.0, -1.0, 0.0, 0.0]])
    rows = [([5, 6, 7], [0, 0, 0], [-1.5, -1.0, -0.5]),
            ([5, 6, 70, 71], [0, 0, 1, 1], [-2.0, -3.0, -2.0]),
            ([5, 6], [0, 0], None)]
    w, sums = batch_importance_weights(rows, trainer, cap=2.0)
    # row 0: exp(0.5) = 1.6487, exp(0) = 1, exp(-0.5) = 0.6065; row 1: exp(0) = 1, exp(1) = 2.718 -> capped 2.0
    expected = torch.tensor([[math.exp(0.5), 1.0, math.exp(-0.5), 1.0], [1.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(w, expected)
    assert sums["count"] == 5 and sums["abs_sum"] == pytest.approx(0.5 + 0 + 0.5 + 0 + 1.0)
    assert sums["weight_sum"] == pytest.approx(math.exp(0.5) + 1 + math.exp(-0.5) + 1 + 2)
    m = mismatch_metrics(sums)
    assert m["rollout/logprob_abs_diff"] == pytest.approx(2.0 / 5)
    assert math.isnan(mismatch_metrics({})["rollout/logprob_abs_diff"])
