"""Model sizes without weights: parameter counts and the dimensions that size activations, KV caches and LoRA.

The memory planner (:mod:`thinktuning.plan`) must answer before anything is downloaded, and this machine may be
offline. So a model's size comes, in this order, from: the embedded alias's converted folder; a local folder's
``config.json``; a hub id's ``config.json`` already in the Hugging Face cache (all three by building the module tree
on the meta device, which allocates nothing and counts exactly, for any architecture); else :data:`KNOWN`, the
hyperparameters of a few well-known Llama/Qwen2-style models written down from their ``config.json`` files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktuning.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """A Llama/Qwen2-style decoder: what sets its parameter count, activations and LoRA adapters."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    """The output head shares the embedding matrix (counted once)."""
    qkv_bias: bool = False
    """Qwen2 has biases on q/k/v; Llama has none."""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def _shape(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, tied: bool,
           qkv_bias: bool = False) -> Shape:
    return Shape(hidden, layers, heads, kv_heads, hidden // heads, intermediate, vocab, tied, qkv_bias)


KNOWN: dict[str, Shape] = {
    # name (hub id without its owner, lower case; base and -Instruct share the shape): hidden, layers, heads,
    # KV heads, MLP width, vocab, tied embeddings. Parameter counts in tests/models/test_shapes.py.
    "llama-3.2-1b": _shape(2048, 16, 32, 8, 8192, 128256, tied=True),
    "llama-3.2-3b": _shape(3072, 28, 24, 8, 8192, 128256, tied=True),
    "llama-3.1-8b": _shape(4096, 32, 32, 8, 14336, 128256, tied=False),
    "qwen2.5-0.5b": _shape(896, 24, 14, 2, 4864, 151936, tied=True, qkv_bias=True),
    "qwen2.5-1.5b": _shape(1536, 28, 12, 2, 8960, 151936, tied=True, qkv_bias=True),
    "qwen2.5-3b": _shape(2048, 36, 16, 2, 11008, 151936, tied=True, qkv_bias=True),
    "qwen2.5-7b": _shape(3584, 28, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    "smollm2-135m": _shape(576, 30, 9, 3, 1536, 49152, tied=True),
    "smollm2-360m": _shape(960, 32, 15, 5, 2560, 49152, tied=True),
    "smollm2-1.7b": _shape(2048, 24, 32, 32, 8192, 49152, tied=True),
}


def linear_layers(shape: Shape) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer, by its module name."""
    h, i = shape.hidden, shape.intermediate
    return {"q_proj": (h, shape.q_dim), "k_proj": (h, shape.kv_dim), "v_proj": (h, shape.kv_dim),
            "o_proj": (shape.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def count_parameters(shape: Shape) -> int:
    """Embedding + per layer (7 linear layers, q/k/v biases if any, 2 RMSNorm weights) + final norm + head."""
    per_layer = sum(a * b for a, b in linear_layers(shape).values()) + 2 * shape.hidden
    if shape.qkv_bias:
        per_layer += shape.q_dim + 2 * shape.kv_dim
    head = 0 if shape.tied else shape.vocab * shape.hidden
    return shape.vocab * shape.hidden + shape.layers * per_layer + shape.hidden + head


def lora_parameters(shape: Shape, r: int, target_modules: list[str]) -> int:
    """Trainable LoRA parameters: r * (in + out) per adapted matrix (A is in x r, B is r x out), in every layer.

    ``all-linear`` is every linear layer but the output head (PEFT's meaning)."""
    layers = linear_layers(shape)
    targets = list(layers) if target_modules == ["all-linear"] else target_modules
    unknown = [t for t in targets if t not in layers]
    if unknown:
        raise ConfigError(f"lora.target_modules={target_modules}: {', '.join(unknown)} is not a linear layer of a "
                          f"Llama/Qwen2-style decoder; use all-linear or names from {', '.join(layers)}")
    return shape.layers * sum(r * (layers[t][0] + layers[t][1]) for t in targets)


def shape_from_config(config: dict[str, Any]) -> Shape | None:
    """The shape a ``config.json`` describes, or None when it is not Llama/Qwen2-style (no such fields)."""
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return Shape(
            hidden=hidden, layers=int(config["num_hidden_layers"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", True)),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def count_on_meta(folder: str | Path) -> int | None:
    """Exact parameter count of the model a folder's ``config.json`` describes: its module tree is built on the
    meta device (no memory, no weights); tied weights count once. None when transformers cannot build it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture this transformers does not know: fall back to the shape's count
        return None
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelSize:
    """A model's parameter count, its shape when known, and where both came from (shown to the user)."""

    spec: str
    parameters: int
    shape: Shape | None
    source: str


def known_shape(spec: str) -> Shape | None:
    """:data:`KNOWN` entry for a hub id (owner ignored, ``-Instruct`` optional, case-insensitive)."""
    name = spec.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    return KNOWN.get(name)


def _cached_config_dir(spec: str) -> Path | None:
    """The folder of a hub id's ``config.json`` if the Hugging Face cache already holds it (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec, "config.json")
    except Exception:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _from_folder(spec: str, folder: Path, where: str) -> ModelSize | None:
    shape = shape_from_config(json.loads((folder / "config.json").read_text()))
    counted = count_on_meta(folder)
    if counted is not None:
        return ModelSize(spec, counted, shape, f"config.json of {where}, counted on the meta device")
    if shape is not None:
        return ModelSize(spec, count_parameters(shape), shape, f"config.json of {where}")
    return None


def model_size(spec: str, cache_dir: str | None = None) -> ModelSize | None:
    """Size of the model ``spec`` names (alias, local folder, hub id), or None when it cannot be known here."""
    from thinktuning.models.resolve import EMBEDDED_ALIAS, resolve

    if spec == EMBEDDED_ALIAS:
        folder = Path(resolve(spec, cache_dir).path)
        return _from_folder(spec, folder, f"the embedded model ({folder})")
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return _from_folder(spec, path, str(path))
    cached = _cached_config_dir(spec)
    if cached is not None:
        found = _from_folder(spec, cached, "the Hugging Face cache")
        if found is not None:
            return found
    shape = known_shape(spec)
    if shape is not None:
        return ModelSize(spec, count_parameters(shape), shape, "the table of known architectures in models/shapes.py")
    return None
