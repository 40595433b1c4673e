"""Model sizes without weights: the table of known architectures against the models' published parameter counts
and against transformers' own module tree (meta device), the embedded model's exact count, and LoRA counts."""

from __future__ import annotations

import json

import pytest

from thinktuning.errors import ConfigError
from thinktuning.models.shapes import (
    KNOWN,
    Shape,
    count_on_meta,
    count_parameters,
    known_shape,
    lora_parameters,
    model_size,
    shape_from_config,
)

PUBLISHED = {  # the parameter counts the models' hub pages and PEFT/transformers report
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
}


def config_json(shape: Shape) -> dict:
    """A config.json for ``shape`` (Qwen2 when it has q/k/v biases, else Llama)."""
    return {"model_type": "qwen2" if shape.qkv_bias else "llama", "hidden_size": shape.hidden,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
            "intermediate_size": shape.intermediate, "vocab_size": shape.vocab,
            "tie_word_embeddings": shape.tied}


def test_the_table_covers_the_published_models():
    assert set(KNOWN) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_counts_match_the_published_ones_and_the_meta_module_tree(name, tmp_path):
    shape = KNOWN[name]
    assert count_parameters(shape) == PUBLISHED[name]
    (tmp_path / "config.json").write_text(json.dumps(config_json(shape)))
    assert count_on_meta(tmp_path) == PUBLISHED[name]
    assert shape_from_config(config_json(shape)) == shape


def test_count_by_hand_for_a_tiny_llama():
    s = Shape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10, tied=False)
    per_layer = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 3 * 8 * 16 + 2 * 8  # q, k, v, o, gate/up/down, 2 norms
    assert count_parameters(s) == 10 * 8 + 2 * per_layer + 8 + 10 * 8  # embedding, layers, final norm, head
    biased = Shape(8, 2, 2, 1, 4, 16, 10, tied=True, qkv_bias=True)
    assert count_parameters(biased) == 10 * 8 + 2 * (per_layer + 8 + 4 + 4) + 8


def test_the_embedded_model_is_counted_exactly_from_its_config(smol_resolved):
    size = model_size("smollm2-135m-instruct")
    # 134,515,008 is also what summing the loaded model's parameters gives (README, LoRA table); here no weights
    assert size is not None and size.parameters == 134_515_008
    assert "meta device" in size.source
    assert size.shape == KNOWN["smollm2-135m"]


def test_lora_counts_r_times_in_plus_out_per_adapted_matrix():
    s = KNOWN["smollm2-135m"]  # h=576, kv=3x64=192, I=1536, 30 layers
    per_layer = 16 * ((576 + 576) + (576 + 192) + (576 + 192) + (576 + 576) + 3 * (576 + 1536))
    assert lora_parameters(s, 16, ["all-linear"]) == 30 * per_layer == 4_884_480  # what PEFT reports (README)
    assert lora_parameters(s, 8, ["q_proj", "v_proj"]) == 30 * 8 * ((576 + 576) + (576 + 192))
    with pytest.raises(ConfigError, match="lm_head is not a linear layer"):
        lora_parameters(s, 8, ["lm_head"])


def test_hub_ids_are_looked_up_by_name_whatever_the_owner_or_instruct_suffix():
    assert known_shape("meta-llama/Llama-3.2-3B-Instruct") == KNOWN["llama-3.2-3b"]
    assert known_shape("unsloth/llama-3.2-3b") == KNOWN["llama-3.2-3b"]
    assert known_shape("Qwen/Qwen2.5-7B-Instruct") == KNOWN["qwen2.5-7b"]
    assert known_shape("someone/Unknown-9B") is None
    assert model_size("someone/Unknown-9B") is None


def test_a_local_folder_is_counted_from_its_config_json(tmp_path):
    s = Shape(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, intermediate=64, vocab=100, tied=True)
    (tmp_path / "config.json").write_text(json.dumps(config_json(s)))
    size = model_size(str(tmp_path))
    assert size is not None and size.shape == s and size.parameters == count_parameters(s)
