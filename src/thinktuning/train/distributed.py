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

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from thinktuning.errors import ConfigError
from thinktuning.train import zero

RANK_SEED_STRIDE = 2**22
"""Added to a sampling seed once per rank. torch's CPU generator keeps only a seed's low 32 bits (a stride of 2**32,
used before, gave every rank the same random stream), so the stride stays inside them: for fewer than 1,024 ranks,
seeds of different ranks never meet for any step below 2**22."""


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


def make_accelerator():
    """The run's ``Accelerator``, as ``accelerate launch`` configured it, plus what accelerate 1.15 leaves out on a
    machine without a GPU (processes started by ``torchrun``, which sets LOCAL_RANK; accelerate's own launcher
    refuses ``--cpu`` with ``--use_fsdp`` and starts a single process for ``--cpu --num_processes N`` without MPI):

    - plain data parallelism: gloo processes on the CPU, which accelerate only sets up when told (``cpu=True``);
      without it every process would train alone as rank 0;
    - FSDP (``ACCELERATE_USE_FSDP=true`` and the ``FSDP_*`` variables, as ``accelerate launch --use_fsdp`` sets
      them): accelerate turns FSDP on for GPU-family devices only, while torch's FSDP2 also shards over gloo, so the
      CPU processes get FSDP2 through accelerate's own plugin and ``prepare``;
    - DeepSpeed (``ACCELERATE_USE_DEEPSPEED=true``): accelerate refuses DeepSpeed with ``cpu=True`` and, without a
      GPU, finds no process-group backend; naming gloo lets DeepSpeed's CPU accelerator start its processes.
    """
    import os

    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    launched = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    if launched and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    accelerator = Accelerator(cpu=launched)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables
        accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


@contextlib.contextmanager
def held_whole(accelerator) -> Iterator[None]:
    """Load models inside this context to keep them whole on every process: the frozen teacher and KL reference.
    Under ZeRO-3, accelerate registers its DeepSpeed config with transformers, and ``from_pretrained`` then
    partitions every model it loads (``zero.Init``); a partitioned model that no engine wraps cannot run a forward.
    accelerate's ``zero3_init_context_manager(enable=False)`` re-registers the same config, so it is taken away here
    and put back after."""
    dschf = getattr(getattr(accelerator.state, "deepspeed_plugin", None), "dschf", None)
    if dschf is None:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(dschf)


def backend(accelerator) -> tuple[str, int | None]:
    """The accelerate backend (``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``, ...) and its sharding level: the ZeRO stage for
    DeepSpeed, the FSDP version for FSDP."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind == "FSDP":
        return kind, getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return kind, getattr(plugin, "zero_stage", None) if kind == "DEEPSPEED" else None


def shards_parameters(kind: str, level: int | None) -> bool:
    """Whether every process must join every forward pass of the student (its parameters are gathered in each)."""
    return kind == "FSDP" or (kind == "DEEPSPEED" and (level or 0) >= 3)


def gathers_state(kind: str) -> bool:
    """Whether a checkpoint must gather the optimizer state (and, when sharded, the weights) from every process:
    FSDP and every DeepSpeed stage partition at least the optimizer state."""
    return kind in ("FSDP", "DEEPSPEED")


def check_backend(kind: str, level: int | None, *, vllm_rollouts: bool = False, teacher_shares_student: bool = False
                  ) -> None:
    """What runs on each backend. DDP and ZeRO-1/2 keep whole parameters everywhere. FSDP2 and ZeRO-3 shard them:
    the student's decoders then run in lockstep (rollout/lockstep.py) and checkpoints gather the full state. Refused,
    with the alternative: FSDP1, and on a sharded student the two paths whose forwards are not in lockstep yet:
    pushing weights into vLLM, and a model teacher that is the LoRA student with its adapters off."""
    if kind == "FSDP" and level != 2:
        raise ConfigError(f"FSDP version {level} is not supported: set fsdp_version: 2 in the accelerate config "
                          "(configs/accelerate/fsdp.yaml does)")
    if not shards_parameters(kind, level):
        return
    name = "FSDP" if kind == "FSDP" else "DeepSpeed ZeRO-3"
    if vllm_rollouts:
        raise ConfigError(f"rollout.backend=vllm under {name} is not supported yet (the weight push would need the "
                          "full weights gathered every step); use rollout.backend=transformers, or DDP with vLLM")
    if teacher_shares_student:
        raise ConfigError(f"under {name}, a LoRA student's model teacher (teacher.model=student-init: the student "
                          "with its adapters off) is not supported yet: its decoder does not run in lockstep. Use "
                          "teacher.model=<another model> (held whole on each process), teacher.backend=http or "
                          "scripted, or full fine-tuning")


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


def full_state(model, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full (unsharded) model and optimizer state dicts of a sharded model, on the CPU, in checkpoint form
    (parameter names, as a single process saves them). A collective: every process calls it; all get the result."""
    engine = zero.engine_of(model)
    if engine is not None:
        return zero.full_state(engine)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    raw = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, raw, options=options)


def load_full_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state saved by :func:`full_state` into a sharded model's optimizer (each process keeps its
    shard). A collective: every process calls it with the same state."""
    engine = zero.engine_of(model)
    if engine is not None:
        zero.load_full_optimizer_state(engine, state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    raw = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, raw, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
