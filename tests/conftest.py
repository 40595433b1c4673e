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


@pytest.fixture(autouse=True)
def _precision_auto_as_without_bf16(request, monkeypatch):
    """In-process tests give the same numbers on every CPU: ``model.dtype=auto`` resolves as on a CPU without bf16
    arithmetic (float32), whatever this one has. Tests of the bf16 path set ``bfloat16`` explicitly; tests of the
    rule itself (``tests/models/test_precision.py``) mark themselves ``real_precision`` to see the real query."""
    if request.node.get_closest_marker("real_precision"):
        yield
        return
    from thinktuning.models import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "tests: bf16 treated as absent"))
    yield


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
