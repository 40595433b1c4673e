"""The settings of one ``thinktuning eval`` run, checked before any model is loaded, and the scrubber that keeps
their secrets (the key in ``--api-key-env``, a password in ``--base-url``) out of everything eval prints or writes.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKEND_NAMES = ("transformers", "vllm", "openai")
"""The generation engines ``eval --backend`` offers (:data:`thinktuning.eval.generators.BACKENDS` builds them)."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the numbers; recorded verbatim in the results."""

    samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    answer_fallback: str = "none"
    limit: int | None = None
    levels: tuple[int, ...] = (1, 2)
    backend: str = "transformers"
    batch_size: int = 32
    dtype: str = "float32"
    base_url: str | None = None
    """``--backend openai``: the server's API root, e.g. http://127.0.0.1:8000/v1."""
    server_model: str | None = None
    """``--backend openai``: the model name to request (default: ``--model``; ``auto``: the server's first)."""
    api_key_env: str | None = None
    vllm_kv_cache_gb: float | None = None
    """``--backend vllm``: the engine's KV cache in GiB (default: 1 on CPU, a share of the GPU's memory on a GPU)."""
    concurrency: int = 8
    timeout_s: float = 600.0

    def scrubber(self):
        """A :class:`~thinktuning.secrets.Scrubber` for the key variable, the URL's userinfo and well-known tokens."""
        from thinktuning.secrets import Scrubber

        return Scrubber.from_environment().learn(key_envs=[self.api_key_env], urls=[self.base_url])

    @property
    def greedy(self) -> bool:
        """One sample means greedy decoding (the usual "accuracy"); several are sampled at ``temperature``."""
        return self.samples == 1

    def check(self) -> None:
        from thinktuning.errors import ConfigError
        from thinktuning.secrets import is_env_var_name

        if self.api_key_env and not is_env_var_name(self.api_key_env):  # never echoed: it may be the key itself
            raise ConfigError(f"--api-key-env must name the environment variable that holds the key (e.g. "
                              f"OPENAI_API_KEY), not the key itself; got a value of {len(self.api_key_env)} characters")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"need --temperature > 0 and 0 < --top-p <= 1, got {self.temperature}, {self.top_p}")
        if self.answer_fallback not in ("none", "last_number"):
            raise ConfigError(f"--answer-fallback must be none or last_number, got {self.answer_fallback!r}")
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"--backend {self.backend!r} is not available; available: {', '.join(BACKEND_NAMES)}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("--backend openai needs --base-url (the server's API root, e.g. http://127.0.0.1:8000/v1)")
        if self.backend != "openai" and self.base_url:
            raise ConfigError(f"--base-url is for --backend openai (the backend is {self.backend})")
        if self.vllm_kv_cache_gb is not None and (self.backend != "vllm" or not self.vllm_kv_cache_gb > 0):
            raise ConfigError(f"--vllm-kv-cache-gb is for --backend vllm and must be > 0, got {self.vllm_kv_cache_gb} "
                              f"with --backend {self.backend}")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise ConfigError(f"need --concurrency >= 1 and --timeout > 0, got {self.concurrency}, {self.timeout_s}")
        if not self.levels or not set(self.levels) <= {1, 2, 3, 4}:
            raise ConfigError(f"--levels must be arithmetic levels among 1,2,3,4, got {list(self.levels)}")


# --------------------------------------------------------------------------------------------------------
# The transformers backend
# --------------------------------------------------------------------------------------------------------

