"""How a mini-batch's rollouts are cut into micro-batches for the update (step 6 of the data flow).

Two savings, both exact (the gradient is the same as with the plain in-order split):

* **Sort by length.** A micro-batch is padded to its longest row, so rows of similar length go together. The
  loss normaliser is computed over the whole mini-batch before the split (``train.update.Update``), so the order in
  which rows are accumulated does not change the sum.
* **Skip rows whose advantage is exactly 0** when nothing else in the loss depends on them (no KL term). Such a row
  contributes ``-0 * weight`` to every token's loss (ordinary and shaped tokens alike, see ``loss.policy_loss``), so
  its gradient is exactly zero; its tokens still count in the normaliser. GRPO gives advantage 0 to every row of a
  group whose rewards are all equal (all wrong, or all right), which on hard prompts is most of a step. TRL's
  trainer still runs them through forward and backward; DAPO's dynamic sampling drops such groups from the data.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_micro_batches(
    response_lengths: Sequence[int],
    advantages: Sequence[float],
    micro_batch_size: int,
    *,
    skip_zero_advantage: bool,
) -> list[list[int]]:
    """Indices (into the rows) of each micro-batch, longest response first; ``[]`` when no row carries gradient.

    Rows are sorted by response length (responses are right-padded to the micro-batch's longest, and they vary far
    more than prompts do). Ties keep their original order, so the plan is deterministic.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if len(response_lengths) != len(advantages):
        raise ValueError(f"{len(response_lengths)} lengths but {len(advantages)} advantages")
    rows = [i for i, a in enumerate(advantages) if not (skip_zero_advantage and a == 0.0)]
    rows.sort(key=lambda i: -response_lengths[i])
    return [rows[k : k + micro_batch_size] for k in range(0, len(rows), micro_batch_size)]


def padded_tokens(
    prompt_lengths: Sequence[int], response_lengths: Sequence[int], plan: Sequence[Sequence[int]]
) -> int:
    """Token positions the forward pass computes for ``plan``: each micro-batch is as wide as its longest prompt
    plus its longest response (``logprobs.collate``). The cost that sorting and skipping reduce; logged as
    ``loss/padded_tokens`` next to the real token count."""
    return sum(
        len(mb) * (max(prompt_lengths[i] for i in mb) + max(response_lengths[i] for i in mb)) for mb in plan if mb
    )
