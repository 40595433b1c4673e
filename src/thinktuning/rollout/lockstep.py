"""Decoding in lockstep across processes, for training engines that shard the student's parameters.

Under FSDP2 (or DeepSpeed ZeRO-3) every forward pass of the student gathers each layer's parameters from all
processes, so every process must run the same number of forward passes, in the same order. A decoder does not: a
process stops when its own rows have ended, and a process with nothing to continue (no guided rollout this step)
runs none. So, as ``transformers``' ``synced_gpus`` and TRL's synced generation do, each decode step starts with a
vote (one all-reduce of a flag): while any process still has a row writing, every process runs a forward, and a
process whose rows have all ended runs a one-token forward whose output it discards. The arithmetic of the rows
that do write is untouched: a lockstep decode samples exactly what an unsynchronised one samples.
"""

from __future__ import annotations

import torch


class Lockstep:
    """The vote and the idle forward. One per training process, made only when the parameters are sharded."""

    def __init__(self, pad_id: int, group=None) -> None:
        self.pad_id, self.group = pad_id, group

    def any(self, mine: bool) -> bool:
        """Whether any process still needs a forward pass (``mine``: whether this one does). A collective: every
        process calls it at the same point of its decode loop."""
        flag = torch.tensor([1 if mine else 0], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    @torch.no_grad()
    def idle_forward(self, model) -> None:
        """One forward of a single padding token: this process's part of the others' forward (the parameter
        gathers), with no cache and no output kept."""
        device = next(model.parameters()).device
        model(input_ids=torch.full((1, 1), self.pad_id, dtype=torch.long, device=device), use_cache=False,
              logits_to_keep=1)

    def idle(self, model, max_steps: int) -> None:
        """Join the others' decode loop with nothing of one's own to decode (the same votes and forwards as a
        process whose rows have all ended at the first step)."""
        for _ in range(max_steps):
            self.idle_forward(model)
            if not self.any(False):  # at the last step every process votes no
                return
