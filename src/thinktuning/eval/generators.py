"""Evaluation's generation engines behind one small interface (:class:`Generator`): the trainer's own transformers
sampler (so an evaluated prompt is token for token the prompt the model was trained on), an in-process vLLM engine
set up as training rollouts set it up (the same prompt tokens, many times faster on a GPU), and any
OpenAI-compatible server. Another engine plugs in as one more entry of :data:`BACKENDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from thinktuning.eval.settings import BACKEND_NAMES, EvalSettings
from thinktuning.openai_client import Completion, OpenAIClient


@dataclass(frozen=True)
class Generation:
    """One response: its text, its length in generated tokens (end-of-turn excluded), and whether it ended by
    itself (False: cut at ``max_new_tokens``). ``error``: why the request for it failed (its text is then empty
    and it is scored wrong), so the results can tell a failed request from a wrong answer."""

    text: str
    num_tokens: int
    finished: bool
    error: str | None = None


class Generator(Protocol):
    """What a generation backend provides. ``prompts`` are user-turn texts; the backend applies the chat format."""

    name: str

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool) -> list[list[Generation]]:
        """``n`` responses per prompt, in prompt order."""
        ...

    def close(self) -> None: ...


class TrainerPrompts:
    """The prompt encoding of the backends that take token ids (``self.tokenizer``): the trainer's own."""

    tokenizer: Any

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """User turns in the chat template with the assistant header: the trainer's own encoding."""
        from thinktuning.models.load import encode_user_turns

        return encode_user_turns(self.tokenizer, list(texts))

    def prompt_lengths(self, prompts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.encode(prompts)]


class TransformersGenerator(TrainerPrompts):
    """Batched generation with the trainer's KV-cache loop on a ``transformers`` causal LM."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 32, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        import torch

        from thinktuning.models.load import end_of_turn_id

        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.eos_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.rng = torch.Generator().manual_seed(seed)  # sampling draws on the CPU (generation.sample)
        self.progress = progress

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool) -> list[list[Generation]]:
        from thinktuning.rollout.sampler import sample

        ids = self.encode(prompts)
        # similar lengths share a batch: less left padding to compute over
        jobs = [i for i in sorted(range(len(ids)), key=lambda i: len(ids[i])) for _ in range(n)]
        out: list[list[Generation]] = [[] for _ in ids]
        n_batches = (len(jobs) + self.batch_size - 1) // self.batch_size
        for b, start in enumerate(range(0, len(jobs), self.batch_size), start=1):
            chunk = jobs[start : start + self.batch_size]
            rollouts = sample(self.model, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, eos_id=self.eos_id,
                              pad_id=self.pad_id, temperature=temperature, top_p=top_p, greedy=greedy,
                              generator=self.rng, batch_size=len(chunk))
            for i, r in zip(chunk, rollouts, strict=True):
                body = r.response_ids[:-1] if r.finished else r.response_ids
                out[i].append(Generation(self.tokenizer.decode(body, skip_special_tokens=True), len(body), r.finished))
            if self.progress is not None:
                self.progress(f"batch {b}/{n_batches}")
        return out

    @property
    def context(self) -> int | None:
        """The model's longest sequence (prompt + response), checked before generating."""
        from thinktuning.models.load import context_limit

        return context_limit(self.model.config)

    def close(self) -> None:
        pass


class VLLMGenerator(TrainerPrompts):
    """Generation on an in-process ``vllm.LLM`` built by :func:`thinktuning.rollout.vllm.engine_args`, the set-up of
    ``rollout.backend=vllm``. Prompts go in as the trainer's token ids (:func:`encode_user_turns`), responses end at
    the end-of-turn token and are decoded as :class:`TransformersGenerator` decodes them, so the two backends differ
    only in their kernels. Request ``i`` of sample ``k`` is seeded ``seed + k * len(prompts) + i``."""

    name = "vllm"

    def __init__(self, start: Callable[[int | None], Any], tokenizer, *, context: int | None, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        from thinktuning.models.load import end_of_turn_id

        self._start, self.tokenizer, self.context, self.seed = start, tokenizer, context, seed
        self.llm: Any = None
        self.eos_id = end_of_turn_id(tokenizer)
        self.progress = progress

    def reserve(self, max_len: int) -> None:
        """Start the engine for sequences of at most ``max_len`` tokens (the longest prompt plus the response
        budget): vLLM sizes its KV cache to hold at least one sequence of its maximum length, and a model's own
        context (8,192 for SmolLM2) would not fit a small CPU cache."""
        if self.llm is None:
            self.llm = self._start(max_len)

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool) -> list[list[Generation]]:
        from vllm import SamplingParams

        ids = self.encode(prompts)
        self.reserve(max(map(len, ids), default=0) + max_new_tokens)  # run_eval reserves for all benchmarks first
        sampling = {"temperature": 0.0} if greedy else {"temperature": temperature, "top_p": top_p}
        out: list[list[Generation]] = [[] for _ in ids]
        for k in range(n):  # one pass per sample index: progress per pass, and seeds independent of n
            params = [SamplingParams(n=1, max_tokens=max_new_tokens, seed=self.seed + k * len(ids) + i,
                                     ignore_eos=True, stop_token_ids=[self.eos_id], detokenize=False, **sampling)
                      for i in range(len(ids))]
            results = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
            for i, r in enumerate(results):
                body = list(r.outputs[0].token_ids)
                finished = bool(body) and body[-1] == self.eos_id
                if finished:
                    body = body[:-1]
                out[i].append(Generation(self.tokenizer.decode(body, skip_special_tokens=True), len(body), finished))
            if self.progress is not None:
                self.progress(f"sample {k + 1}/{n} of {len(ids)} prompts")
        return out

    def close(self) -> None:
        self.llm = self._start = None  # the engine, and the merged LoRA weights the start-up holds


def _transformers_backend(resolved, settings: EvalSettings, progress: Callable[[str], None] | None) -> Generator:
    import torch

    from thinktuning.models.load import load_model, load_tokenizer

    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, settings.dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return TransformersGenerator(model, tokenizer, batch_size=settings.batch_size, seed=settings.seed,
                                 progress=progress)


def _vllm_backend(resolved, settings: EvalSettings, progress: Callable[[str], None] | None) -> Generator:
    """The engine starts from the model folder; a LoRA checkpoint starts from its base and gets the merged weights
    pushed in, as training pushes its weights."""
    import torch
    from transformers import AutoConfig

    from thinktuning.models.load import context_limit, is_adapter_dir, load_model, load_tokenizer
    from thinktuning.rollout.vllm import engine_args, import_vllm, load_weights

    vllm = import_vllm("eval --backend vllm")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(resolved)
    merged = load_model(resolved, settings.dtype) if is_adapter_dir(resolved.path) else None
    path = merged.name_or_path if merged is not None else resolved.path
    context = context_limit(merged.config if merged is not None else AutoConfig.from_pretrained(path))

    def start(max_len: int | None):
        llm = vllm.LLM(**engine_args(path, seed=settings.seed, dtype=settings.dtype, max_model_len=max_len,
                                     device_type=device_type, kv_cache_gb=settings.vllm_kv_cache_gb))
        if merged is not None:
            load_weights(llm, merged, llm.llm_engine.model_config.dtype)
            llm.reset_prefix_cache()
        return llm

    return VLLMGenerator(start, tokenizer, context=context, seed=settings.seed, progress=progress)


def _openai_backend(model_name: str, settings: EvalSettings, progress: Callable[[str], None] | None) -> Generator:
    from thinktuning.errors import ConfigError
    from thinktuning.eval.generators import OpenAIGenerator
    from thinktuning.openai_client import OpenAIClient, normalize_base_url

    name = settings.server_model or model_name
    try:
        normalize_base_url(settings.base_url or "")
    except ConfigError as e:
        raise ConfigError(f"--base-url={e}") from None
    try:
        client = OpenAIClient(settings.base_url or "", None if name == "auto" else name,
                              api_key_env=settings.api_key_env, concurrency=settings.concurrency,
                              timeout_s=settings.timeout_s)
    except ConfigError as e:
        raise ConfigError(f"eval --backend openai: {e} (--api-key-env)") from None
    return OpenAIGenerator(client, seed=settings.seed, progress=progress)


log = logging.getLogger(__name__)


class OpenAIGenerator:
    """The evaluation :class:`~thinktuning.eval.generators.Generator` protocol over an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, client: OpenAIClient, *, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.seed = seed
        self.progress = progress
        self.failed = 0
        """Requests that failed after their retries (their responses are empty and scored wrong)."""

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 greedy: bool):

        conversations = [[{"role": "user", "content": p}] for p in prompts]
        params: dict = {"max_tokens": max_new_tokens}
        if greedy:
            params["temperature"] = 0.0
        else:
            params.update(temperature=temperature, top_p=top_p)
        out: list[list[Generation]] = [[] for _ in prompts]
        # one request per sample with its own seed: n > 1 in one request is not supported by every server
        for k in range(n):
            for i, c in enumerate(self.client.chat(conversations, seed=self.seed + k, **params)):
                out[i].append(self._generation(c))
            if self.progress is not None:
                self.progress(f"sample {k + 1}/{n} of {len(prompts)} prompts")
        return out

    def _generation(self, c: Completion):
        from thinktuning.eval.generators import Generation

        if not c.ok:
            self.failed += 1
            log.warning("a generation request failed (scored wrong): %s", c.error)
            return Generation("", 0, False, error=c.error or "request failed")
        tokens = c.completion_tokens if c.completion_tokens is not None else len(c.text.split())
        return Generation(c.text, tokens, c.finish_reason == "stop")

    def close(self) -> None:
        self.client.close()


BACKENDS: dict[str, Callable[..., Generator]] = {"transformers": _transformers_backend, "vllm": _vllm_backend,
                                                 "openai": _openai_backend}
assert tuple(BACKENDS) == BACKEND_NAMES
"""Backend name -> factory(resolved_model, settings, progress). Only backends that exist are listed."""
