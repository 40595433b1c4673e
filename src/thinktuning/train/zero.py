"""DeepSpeed ZeRO (``accelerate launch --config_file configs/accelerate/deepspeed-zero{2,3}.yaml``): the engine's
side of an update, and checkpoints in the single-process format.

Why the update talks to the engine directly. accelerate's ``backward`` under DeepSpeed marks every call an
accumulation boundary and steps the engine after it, so each micro-batch would be its own optimizer update, and it
lets the engine divide the loss by the config's ``gradient_accumulation_steps``. The trainer's loss is already the
mini-batch's mean (train/distributed.py), and a mini-batch's micro-batch count is the trainer's own. So every
backward here runs with ``scale_wrt_gas=False``, only the last micro-batch of a mini-batch is the boundary, and
``engine.step()`` (DeepSpeed's clipping at ``optim.max_grad_norm``, then the optimizer) is called once per
mini-batch. The learning-rate schedule stays the trainer's (a torch scheduler is not handed to the engine).

Why checkpoints do not use ``engine.save_checkpoint``. Its files are per-rank partitions readable only by the
same ZeRO stage and world size. Here every process gathers each parameter and its AdamW moments (DeepSpeed's
``GatheredParameters`` and ``safe_get_full_optimizer_state``), and the main process writes them as one process
would: ``model.safetensors`` for ``eval`` and other tools, and the optimizer state keyed by parameter name, the
format torch's ``get_optimizer_state_dict(full_state_dict=True)`` writes for FSDP2. Resume puts them back into the
partitions (``safe_set_full_optimizer_state``). Gathering is one parameter at a time, so no process ever holds
more than the full state being written.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import torch

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def engine_of(model):
    """The DeepSpeed engine ``accelerator.prepare`` returned, or None when the model is not under DeepSpeed (then
    DeepSpeed may not even be imported, and is not imported here: it is slow to import)."""
    deepspeed = sys.modules.get("deepspeed")
    return model if deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine) else None


def configure(accelerator, *, micro_batch_size: int, max_grad_norm: float) -> None:
    """Settle the DeepSpeed config before ``prepare``: the trainer's micro-batch, no engine-side accumulation (the
    update marks its own boundary) and the trainer's clipping threshold, in place of the accelerate config's."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm


def backward(engine, loss: torch.Tensor, *, last: bool) -> None:
    """One micro-batch's backward; ``last`` makes it the mini-batch's accumulation boundary (gradients reduced)."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine) -> float:
    """Clip and apply the accumulated gradients (``engine.step``); returns the gradient norm before clipping."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm.item() if hasattr(norm, "item") else (math.nan if norm is None else norm))


def drop_gradients(engine) -> None:
    """Discard a mini-batch's accumulated gradients without an update (a non-finite loss on some process)."""
    engine.optimizer.zero_grad(set_to_none=True)


def _gathered(param: torch.Tensor):
    """The whole parameter, gathered from its ZeRO-3 partitions while the context is open (as it is otherwise)."""
    if not hasattr(param, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=None)


def full_state(engine) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full model state dict and the full optimizer state (parameter names as keys) on the CPU. A collective:
    every process calls it, in the same order; all get the result."""
    from deepspeed.utils import safe_get_full_optimizer_state

    module = engine.module
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        with _gathered(tensor):
            weights[name] = tensor.detach().cpu().clone()
    state: dict[str, dict[str, torch.Tensor]] = {}
    trained = {name: p for name, p in module.named_parameters() if p.requires_grad}
    step = None  # the AdamW step, the same for every partition: read once, when there are moments to save
    for name, param in trained.items():
        moments = {key: safe_get_full_optimizer_state(param, key) for key in ADAM_KEYS}
        if all(m is not None for m in moments.values()):
            step = _adam_step(engine) if step is None else step
            state[name] = {"step": torch.tensor(step), **{k: m.detach().cpu().clone() for k, m in moments.items()}}
    names = list(trained)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    if len(groups) != 1:
        raise NotImplementedError(f"{len(groups)} optimizer parameter groups under DeepSpeed (the trainer makes one)")
    return weights, {"state": state, "param_groups": [{**groups[0], "params": names}]}


def load_full_optimizer_state(engine, saved: dict[str, Any]) -> None:
    """Put an optimizer state written by :func:`full_state` (or by a one-process or FSDP2 run of the same model)
    back into the engine's partitions. A collective: every process calls it with the same state."""
    from deepspeed.utils import safe_set_full_optimizer_state

    _init_adam_states(engine)
    params = dict(engine.module.named_parameters())
    steps = set()
    for name, entry in saved["state"].items():
        for key in ADAM_KEYS:
            safe_set_full_optimizer_state(params[name], entry[key], key)
        steps.add(float(entry["step"]))
    if len(steps) > 1:
        raise ValueError(f"the saved optimizer state has parameters at different AdamW steps {sorted(steps)}")
    for group, saved_group in zip(engine.optimizer.param_groups, saved["param_groups"], strict=True):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    if steps:
        _set_adam_step(engine, steps.pop())


def _inner_states(engine) -> list[dict[str, Any]]:
    """The torch AdamW's per-tensor states inside DeepSpeed's ZeRO optimizer (one per flat partition)."""
    inner = engine.optimizer.optimizer
    return [s for s in inner.state.values() if "step" in s]


def _init_adam_states(engine) -> None:
    """Create the AdamW states of a fresh engine (torch creates them at the first step) as zeros, so that saved
    moments can be written into them. The tensors the torch optimizer steps are DeepSpeed's flat fp32 partitions
    (ZeRO-3 puts them into the optimizer's groups only while it steps)."""
    zero_opt = engine.optimizer
    flats = getattr(zero_opt, "fp32_partitioned_groups_flat", None) or zero_opt.single_partition_of_fp32_groups
    inner = zero_opt.optimizer
    amsgrad = any(g.get("amsgrad") for g in inner.param_groups)
    for p in flats:
        state = inner.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            for key in ADAM_KEYS + (("max_exp_avg_sq",) if amsgrad else ()):
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _adam_step(engine) -> float:
    steps = {float(s["step"]) for s in _inner_states(engine)}
    if len(steps) != 1:
        raise ValueError(f"DeepSpeed's partitions are at AdamW steps {sorted(steps)}; expected one")
    return steps.pop()


def _set_adam_step(engine, value: float) -> None:
    for s in _inner_states(engine):
        s["step"] = torch.full_like(s["step"], value) if torch.is_tensor(s["step"]) else value
