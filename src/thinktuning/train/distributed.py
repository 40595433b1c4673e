"""Several processes (``accelerate launch --num_processes N``): which groups each one owns, seeds, and reductions.

A step's prompt groups are dealt out whole: rank ``r`` of ``N`` takes groups ``r, r + N, r + 2N, ...``. A group is
never split, so each process samples, guides, scores and computes GRPO advantages for its own groups exactly as a
single process would; the only cross-process arithmetic is the loss normaliser and the logged metrics.

Loss normaliser (``loss.aggregation=token-mean``). The recipe's loss for one optimizer step is the mean over all
T response tokens of the mini-batch, ``L = (S_0 + ... + S_{N-1}) / T``, where ``S_r`` is the summed per-token loss
of rank r's sequences and ``T = T_0 + ... + T_{N-1}`` (all-reduced). DDP *averages* gradients over ranks:
``g = (1/N) * sum_r grad(L_r)``. With ``L_r = S_r / (T / N)`` that gives ``(1/N) * sum_r N * grad(S_r) / T =
grad(L)``: each rank divides its token sum by ``T / N``, not by its own ``T_r`` (which would weight a rank's tokens
by how few it happened to have) nor by ``T`` (which would shrink the gradient N times). The sequence-mean
aggregations divide by the sequence count, global ``N * n_r``, so their normaliser ``N * n_r / N = n_r`` is the local
count already; the same formula covers both. With one process it is the single-process normaliser.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from thinktuning.errors import ConfigError

RANK_SEED_STRIDE = 2**32
"""Added to a sampling seed once per rank: seeds of different ranks never meet for any step below 2**32."""


def check_world(prompts_per_step: int, mini_batch_prompts: int | None, num_processes: int) -> None:
    """Groups are dealt out whole and evenly, so the prompt counts must divide by the number of processes."""
    if num_processes <= 1:
        return
    if prompts_per_step % num_processes:
        raise ConfigError(
            f"rollout.prompts_per_step={prompts_per_step} must be divisible by the number of processes "
            f"({num_processes}): each process trains on whole prompt groups. Use a multiple of {num_processes}"
        )
    if mini_batch_prompts is not None and mini_batch_prompts % num_processes:
        raise ConfigError(
            f"optim.mini_batch_prompts={mini_batch_prompts} must be divisible by the number of processes "
            f"({num_processes}): each optimizer step takes the same number of whole groups from every process"
        )


def backend(accelerator) -> tuple[str, int | None]:
    """The accelerate backend (``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``, ...) and, for DeepSpeed, its ZeRO stage."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return kind, getattr(plugin, "zero_stage", None) if kind == "DEEPSPEED" else None


def check_backend(kind: str, stage: int | None) -> None:
    """Refuse the backends that shard parameters (FSDP, DeepSpeed ZeRO-3): our rollout and teacher decoders run
    as many forward passes as their own rollouts need, so processes run different numbers of forwards, and a
    sharded forward needs every process (the run would hang). DDP and ZeRO-2 keep whole parameters everywhere."""
    if kind == "FSDP" or (stage or 0) >= 3:
        raise ConfigError(
            f"accelerate backend {'FSDP' if kind == 'FSDP' else 'DeepSpeed ZeRO-3'} is not supported yet: it shards "
            "the parameters, and thinktuning's decoders run a different number of forward passes on each process "
            "(the run would hang). Launch with configs/accelerate/ddp.yaml or deepspeed-zero2.yaml"
        )


def my_groups(n_groups: int, rank: int, num_processes: int) -> list[int]:
    """The indices of the step's groups that ``rank`` owns (round-robin)."""
    return list(range(rank, n_groups, num_processes))


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank sampling seed: rank 0 keeps the single-process seed, so a 1-process run is unchanged."""
    return seed + rank * RANK_SEED_STRIDE


def rank_salt(rank: int) -> str:
    """Suffix for string-seeded RNGs (guidance selection): empty on rank 0, for the same reason."""
    return f"-rank{rank}" if rank else ""


def loss_normalizer(global_count: float, num_processes: int) -> float:
    """What rank r divides its summed loss by so that DDP's gradient average is the global mean (see above)."""
    return global_count / num_processes


def all_sum(accelerator, value: float) -> float:
    """The sum of ``value`` over all processes (the value itself with one)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def mean_metrics(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Per-key mean over processes of per-rank means, skipping NaN (a rank that measured nothing). Every rank
    holds the same number of sequences, so this is the mean over all sequences. The key sets are gathered first,
    so a key one rank lacks cannot misalign the reduced tensor."""
    if accelerator.num_processes == 1:
        return values
    keys = sorted({k for ks in gather(accelerator, [sorted(values)]) for k in ks})
    vals = torch.tensor([float(values.get(k, math.nan)) for k in keys], dtype=torch.float64)
    valid = ~torch.isnan(vals)
    packed = torch.stack([torch.where(valid, vals, 0.0), valid.double()]).to(accelerator.device)
    total, count = accelerator.reduce(packed, reduction="sum").cpu()
    return {k: (t / c).item() if c > 0 else math.nan for k, t, c in zip(keys, total, count, strict=True)}


def gather(accelerator, items: list[Any]) -> list[Any]:
    """The concatenation of every process's ``items`` (rank order), on every process; picklable objects."""
    if accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)
