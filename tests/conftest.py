"""Shared fixtures: a tiny random-weight Llama, and the embedded SmolLM2 tokenizer (resolved once)."""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 64


def make_tiny_model(seed: int = 0, initializer_range: float = 0.5):
    """A 2-layer Llama with 64 tokens. A wide init makes its next-token distributions peaked (top token ~0.5),
    so greedy decoding has clear winners and sampled log-probs are far from the uniform log(1/64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread_for_tiny_models(request):
    """Tiny models run ~100x faster on one thread than on two contended ones (thread hand-off dominates a
    forward pass of a few microseconds of math). Only tests that use the tiny-model fixtures are affected, and
    the previous thread count is restored afterwards."""
    if not {"tiny_model", "make_model", "tiny_student"} & set(request.fixturenames):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_REAL_CPU_BF16_SUPPORT = None


@pytest.fixture(autouse=True, scope="session")
def _precision_auto_as_without_bf16():
    """In-process tests give the same numbers on every CPU: ``model.dtype=auto`` resolves as on a CPU without bf16
    arithmetic (float32), whatever this one has. Session-wide, so that module-scoped fixtures that train see it too.
    Tests of the bf16 path set ``bfloat16`` explicitly; a test of the rule itself asks for ``real_cpu_bf16_support``.
    Subprocesses (the CLI, DDP, the wheel) see the real CPU."""
    global _REAL_CPU_BF16_SUPPORT
    from thinktuning.models import precision

    _REAL_CPU_BF16_SUPPORT = precision.cpu_bf16_support
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "cpu_bf16_support", lambda: (False, "tests: bf16 treated as absent"))
        yield


@pytest.fixture
def real_cpu_bf16_support(monkeypatch):
    """This machine's real answer, for the test that checks it (conftest replaces it for every other test)."""
    from thinktuning.models import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", _REAL_CPU_BF16_SUPPORT)
    return _REAL_CPU_BF16_SUPPORT


@pytest.fixture(scope="session")
def tiny_model():
    """Shared read-only tiny model: tests that train must build their own with ``make_tiny_model``."""
    return make_tiny_model()


@pytest.fixture
def make_model():
    """Factory for fresh tiny models (for tests that train or change modes)."""
    return make_tiny_model


@pytest.fixture(scope="session")
def smol_resolved():
    from thinktuning.models.resolve import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_resolved):
    from thinktuning.models.load import load_tokenizer

    return load_tokenizer(smol_resolved)
