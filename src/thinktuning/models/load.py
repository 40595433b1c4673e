"""Loading a resolved model: tokenizer (with a chat template), weights (a LoRA adapter folder merged into its base
for inference), the end-of-turn token, the context limit, and the chat-formatted prompts every stage shares.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from thinktuning.errors import ConfigError, ModelError, ModelNotFoundError
from thinktuning.models.precision import DTYPES
from thinktuning.models.resolve import EMBEDDED_ALIAS, ResolvedModel, resolve
from thinktuning.run.checkpoint import checkpoint_read_errors

log = logging.getLogger(__name__)


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = _from_pretrained(AutoTokenizer, resolved, trust_remote_code=trust_remote_code)
    except ValueError as err:  # e.g. a model folder without tokenizer files
        raise ModelNotFoundError(
            f"model {resolved.spec!r}: no usable tokenizer at {resolved.path} ({str(err).splitlines()[0][:200]}). "
            "A model folder needs its tokenizer files (tokenizer.json / tokenizer_config.json) beside config.json"
        ) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding positions are masked out everywhere
    if not getattr(tok, "chat_template", None):
        raise ModelError(
            f"the tokenizer of {resolved.spec!r} has no chat template; ThinkTuning prompts are chat turns. "
            "Use an instruct/chat model or add a chat_template to its tokenizer_config.json"
        )
    return tok


def load_model(resolved: ResolvedModel, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a causal LM for training or frozen use; SDPA attention where the architecture supports it.

    A LoRA adapter folder (a LoRA run's checkpoint) loads as its base with the adapter merged in: a plain model
    for inference (training resumes through :func:`thinktuning.models.lora.load_student`, which keeps the adapter
    apart)."""
    from transformers import AutoModelForCausalLM

    if resolved.kind == "folder" and is_adapter_dir(resolved.path):
        return load_adapter_model(resolved, dtype, trust_remote_code)
    model = _from_pretrained(
        AutoModelForCausalLM, resolved, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model


def _from_pretrained(cls, resolved: ResolvedModel, **kwargs):
    """``cls.from_pretrained`` with one clear error: a damaged checkpoint of a run (CheckpointError, naming the one
    to fall back on), a hub id that cannot be fetched, or a local folder that cannot be read."""
    try:
        with checkpoint_read_errors(resolved.path):
            return cls.from_pretrained(resolved.path, **kwargs)
    except OSError as err:
        if resolved.kind == "hub":
            raise ModelNotFoundError(
                f"model {resolved.spec!r}: not a local file or folder, and loading it from the Hugging Face hub "
                f"failed ({str(err).splitlines()[0][:200]}). Check the id and your network or HF_TOKEN for gated "
                f"models, or pass a local folder, a .gguf file, or the embedded alias {EMBEDDED_ALIAS!r}"
            ) from err
        raise ModelNotFoundError(f"model {resolved.spec!r} at {resolved.path}: {str(err)[:300]}") from err


def context_limit(model_config) -> int | None:
    """The longest sequence a model's positions cover (``max_position_embeddings`` or its older names)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def end_of_turn_id(tokenizer) -> int:
    """The token a chat model emits to end its turn (``<|im_end|>``, ``<|eot_id|>``, ...)."""
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            return tid
    if tokenizer.eos_token_id is None:
        raise ModelError("tokenizer has neither a known end-of-turn token nor an eos token; ThinkTuning needs one "
                         "to end responses. Use an instruct/chat model or set eos_token in its tokenizer_config.json")
    return int(tokenizer.eos_token_id)


def encode_user_turns(tokenizer, texts: list[str]) -> list[list[int]]:
    """Chat-format and tokenize user turns, ending with the assistant header: the prompts the student sees, in
    training and in evaluation alike. Rendering the template per prompt is slow for thousands of prompts
    (``BENCHMARKS.md``, "Decoding path"), so we render it once around a sentinel and fill in each text, after
    checking on the first text that this gives exactly what the template renders."""
    def render(text: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    sentinel = "\x00THINKTUNING-PROMPT\x00"
    wrapped = render(sentinel)
    if wrapped.count(sentinel) == 1:
        head, tail = wrapped.split(sentinel)
        chats = [head + t + tail for t in texts]
        if chats and chats[0] != render(texts[0]):
            chats = [render(t) for t in texts]
    else:
        chats = [render(t) for t in texts]
    return tokenizer(chats, add_special_tokens=False)["input_ids"]


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    """Whether a folder holds a PEFT adapter (a LoRA run's checkpoint) rather than full model weights."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_adapter_model(resolved: ResolvedModel, dtype: str = "float32", trust_remote_code: bool = False):
    """A LoRA checkpoint as a plain model for inference: its base (resolved from the adapter config) with the
    adapter merged in, so eval code sees an ordinary transformers model."""
    import peft

    folder = Path(resolved.path)
    try:
        base_name = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelNotFoundError(f"adapter {folder}: unreadable {ADAPTER_CONFIG} ({err})") from err
    if not base_name:
        raise ModelNotFoundError(
            f"adapter {folder}: {ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty); set it to "
            "the base model's folder, .gguf file or hub id"
        )
    try:
        base_spec = resolve(base_name)
    except ModelNotFoundError as err:
        raise ModelNotFoundError(f"adapter {folder}: its base model cannot be found: {err}") from err
    base = load_model(base_spec, dtype, trust_remote_code)
    with checkpoint_read_errors(folder):  # a truncated adapter of a run's checkpoint: CheckpointError
        return peft.PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def enable_gradient_checkpointing(model) -> None:
    """Turn on transformers' gradient checkpointing, non-reentrant: it needs no input that requires grad, so it
    works with frozen embeddings and LoRA, and it leaves gradients unchanged (tested)."""
    if not getattr(model, "supports_gradient_checkpointing", True) and not hasattr(model, "get_base_model"):
        raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support it; set it to false")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
