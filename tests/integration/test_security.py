"""Model output and model files are untrusted input; secrets stay in the environment.

* ``trust_remote_code`` is off in every preset and reaches every ``from_pretrained`` call exactly as configured;
* resuming never unpickles arbitrary objects: a checkpoint file carrying code is refused, the code never runs;
* no config field can hold a secret, and secrets in the environment (hub token, API keys) never reach the run
  folder, the terminal or the HTML report.

There is no HTTP teacher yet; when one lands, its API key must come from an environment variable named in the
config (never the key itself), and the last test below extends to it unchanged.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from tests.run.test_checkpoint import save, training_parts
from tests.train.test_trainer import _tiny_cfg, _tiny_student
from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.cli import main
from thinktuning.config.load import preset_names
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import CheckpointError
from thinktuning.run.checkpoint import load_training_state


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


# --- trust_remote_code ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_trust_remote_code_is_off_in_every_preset(name):
    assert load_config(name).model.trust_remote_code is False
    assert ThinkTuningConfig().model.trust_remote_code is False


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Every AutoModelForCausalLM / AutoTokenizer.from_pretrained call's (class, path, kwargs), still loading."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, str(args[0]), kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_every_load_as_configured(tmp_path, tiny_student, from_pretrained_calls, trust):
    # a separate teacher model (not the frozen student copy) and a KL reference: every load path of a run
    extra = [f"teacher.model={tiny_student}", "loss.kl_coef=0.1"] if trust else ["loss.kl_coef=0.1"]
    if trust:
        extra.append("model.trust_remote_code=true")
    trainer = ThinkTuningTrainer(_tiny_cfg(tiny_student, tmp_path / "run", extra))
    trainer.close()
    kinds = sorted(name for name, _, _ in from_pretrained_calls)
    want = ["AutoModelForCausalLM"] * (3 if trust else 2) + ["AutoTokenizer"] * (2 if trust else 1)
    assert kinds == want, from_pretrained_calls
    assert [kwargs.get("trust_remote_code") for _, _, kwargs in from_pretrained_calls] == [trust] * len(want)


# --- checkpoints are data, never code ------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this object calls ``open(marker, "w")``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_checkpoint_file_that_carries_code_is_refused_and_never_runs(
    tmp_path, make_model, smol_tokenizer, name
):
    parts = training_parts(make_model)
    path = save(tmp_path / "run", 1, parts, smol_tokenizer)
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "payload": _RunsCode(marker)}, path / name)

    _, opt, sched = parts
    with pytest.raises(CheckpointError, match="is unreadable") as info:
        load_training_state(path, opt, sched)
    assert "UnpicklingError" in str(info.value) or "Unsupported global" in str(info.value)
    assert not marker.exists(), "loading a checkpoint executed code from it"

    # the file really is an exploit: a plain unpickle runs it
    torch.save(_RunsCode(tmp_path / "control"), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control").exists()


def test_checkpoint_weights_are_safetensors(tmp_path, make_model, smol_tokenizer):
    path = save(tmp_path, 1, training_parts(make_model), smol_tokenizer)
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names
    assert not {"pytorch_model.bin", "model.bin", "training_args.bin"} & names


# --- secrets -------------------------------------------------------------------------------------------------

SECRET_WORDS = {"key", "apikey", "secret", "password", "passwd", "token", "credential", "credentials", "auth"}


def _field_names(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _field_names(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_no_config_field_can_hold_a_secret():
    names = list(_field_names(ThinkTuningConfig()))
    assert "model.student" in names and "teacher.model" in names
    # a field named *_env holds the NAME of an environment variable (validated as one), never the secret itself
    holders = [n for n in names if SECRET_WORDS & set(n.rsplit(".", 1)[-1].split("_")) and not n.endswith("_env")]
    assert holders == [], f"config.yaml would store these: {holders}; read secrets from environment variables"


SECRETS = {
    "HF_TOKEN": "hf_SECRET0123456789abcdef",
    "THINKTUNING_TEACHER_API_KEY": "sk-SECRET-teacher-0123456789",
    "OPENAI_API_KEY": "sk-SECRET-openai-0123456789",
}


def test_secrets_in_the_environment_never_reach_files_terminal_or_report(
    tmp_path, tiny_student, monkeypatch, capsys, caplog
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    argv = ["train", "--output-dir", str(run), "--max-steps", "1", "--set", f"model.student={tiny_student}",
            "--set", "rollout.max_new_tokens=16", "--set", "teacher.max_reason_tokens=4",
            "--set", "teacher.max_phrase_tokens=4", "--set", "data.limit=8", "--verbose"]
    with caplog.at_level(logging.DEBUG):
        assert main(argv) == 0
        assert main(["report", str(run), "--output", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr()
    files = [p for p in run.rglob("*") if p.is_file()] + [tmp_path / "report.html"]
    assert {"config.yaml", "run.json", "metrics.jsonl", "rollouts.jsonl", "report.html"} <= {p.name for p in files}
    for value in SECRETS.values():
        for path in files:
            assert value.encode() not in path.read_bytes(), f"a secret is written in {path}"
        for where, text in (("stdout", out.out), ("stderr", out.err), ("log", caplog.text)):
            assert value not in text, f"a secret is printed to the {where}"
