"""Model specs: what each form resolves to, and the messages for specs that are wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from thinktuning.errors import ModelNotFoundError
from thinktuning.models.load import end_of_turn_id, load_tokenizer
from thinktuning.models.resolve import EMBEDDED_ALIAS, ResolvedModel, resolve


def test_nonexistent_local_path_lists_what_was_tried(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve("./no/such/model", cache_dir=tmp_path)
    message = str(info.value)
    assert "'./no/such/model'" in message
    assert "no such file or folder" in message
    assert "tried a .gguf file and a local folder" in message
    assert EMBEDDED_ALIAS in message


@pytest.mark.parametrize("spec", ["/no/such/dir", "~/no-such-model-here", "../nope", "a/b/c", "missing.gguf"])
def test_path_like_specs_are_not_hub_ids(spec: str, tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        resolve(spec, cache_dir=tmp_path)


def test_model_not_found_is_a_file_not_found_error() -> None:
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_folder_without_config_is_refused(tmp_path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "README.md").write_text("weights coming soon")
    with pytest.raises(ModelNotFoundError) as info:
        resolve(str(folder), cache_dir=tmp_path / "cache")
    assert "has no config.json" in str(info.value)
    assert "no .gguf files" in str(info.value)


def test_folder_with_two_ggufs_is_refused(tmp_path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"x")
    (folder / "b.gguf").write_bytes(b"y")
    with pytest.raises(ModelNotFoundError, match=r"several \.gguf files"):
        resolve(str(folder), cache_dir=tmp_path / "cache")


def test_folder_with_config_resolves_to_itself(tmp_path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve(str(folder), cache_dir=tmp_path / "cache") == ResolvedModel(str(folder), str(folder))


def test_corrupt_gguf_is_explained_and_leaves_no_cache(tmp_path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError) as info:
        resolve(str(bad), cache_dir=cache)
    message = str(info.value)
    assert "could not read GGUF file" in message
    assert str(bad) in message
    models = cache / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_hub_like_id_resolves_to_hub() -> None:
    r = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert r == ResolvedModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", kind="hub"
    )


def test_embedded_alias_resolves_to_a_model_folder(smol_resolved) -> None:
    assert smol_resolved.kind == "embedded"
    assert smol_resolved.spec == EMBEDDED_ALIAS
    folder = Path(smol_resolved.path)
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 49152


def test_end_of_turn_of_smollm2_is_im_end(smol_tokenizer) -> None:
    assert end_of_turn_id(smol_tokenizer) == 2
    assert smol_tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert smol_tokenizer.pad_token_id is not None


class _EosOnly:
    """A tokenizer without any chat end-of-turn token: every lookup gives the unknown id."""

    unk_token_id = 0
    eos_token_id = 7

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.unk_token_id


def test_end_of_turn_falls_back_to_eos() -> None:
    assert end_of_turn_id(_EosOnly()) == 7


def test_end_of_turn_without_any_eos_raises() -> None:
    tok = _EosOnly()
    tok.eos_token_id = None
    with pytest.raises(ValueError, match="neither a known end-of-turn token nor an eos token"):
        end_of_turn_id(tok)


def test_tokenizer_without_chat_template_is_refused(tmp_path, smol_resolved, smol_tokenizer) -> None:
    folder = tmp_path / "plain"
    smol_tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.pop("chat_template", None)
    config_path.write_text(json.dumps(tok_config))
    shutil.copy(Path(smol_resolved.path) / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(ResolvedModel("plain-model", str(folder)))


def test_model_folder_without_tokenizer_files_is_model_not_found(tmp_path, smol_resolved) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(Path(smol_resolved.path) / "config.json", folder / "config.json")
    with pytest.raises(ModelNotFoundError, match="'weights-only'"):
        load_tokenizer(ResolvedModel("weights-only", str(folder)))


@pytest.mark.parametrize("with_lora", [False, True])
def test_gradient_checkpointing_leaves_gradients_unchanged(make_model, with_lora):
    import peft
    import torch

    from thinktuning.models.load import enable_gradient_checkpointing
    from thinktuning.train.logprobs import collate, token_logprobs

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = make_model()
        if with_lora:
            lora = peft.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
            model = peft.get_peft_model(model, lora)
        model.train()
        if checkpointing:
            enable_gradient_checkpointing(model)
            base = model.get_base_model() if with_lora else model
            assert base.is_gradient_checkpointing  # really on, not a silent no-op
        batch = collate([[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10, 11]], pad_id=0)
        token_logprobs(model, batch).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
