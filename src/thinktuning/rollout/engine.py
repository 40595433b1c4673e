"""One interface for every rollout engine (verl's ``BaseRollout`` plays this role there).

The trainer holds one engine and calls the same three methods whichever it is: the transformers sampler
(:class:`thinktuning.rollout.sampler.TransformersEngine`, which samples from the live training model) or vLLM
(:class:`thinktuning.rollout.vllm.VLLMRollout`, which holds its own copy and is fed the weights after updates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from thinktuning.rollout.types import Rollout


@runtime_checkable
class RolloutEngine(Protocol):
    exact_logprobs: bool
    """True when the engine's log-probs are the trainer's own forward (no importance correction needed); False when
    its numbers differ (another engine's kernels, another precision), so the update corrects with them."""

    def sample(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Rollout]:
        """One response per prompt (repeat a prompt G times for a group). ``seed`` alone decides the draws, so a
        step's rollouts do not depend on what ran before (exact resume)."""
        ...

    def push_weights(self, model: torch.nn.Module) -> None:
        """Make the next ``sample`` use ``model``'s current weights."""
        ...

    def close(self) -> None: ...
