"""LoRA on the student: only adapters train, the teacher and KL reference are the same model with adapters off (no
second copy), checkpoints hold the adapter, resume is exact, and ``load_model`` turns an adapter checkpoint back into
the trained model. All on the tiny random student of test_trainer.py (real tokenizer, teacher, splice, loss)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.train.test_trainer import _comparable, _tiny_cfg, _tiny_student
from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.errors import ConfigError
from thinktuning.jsonl import read_jsonl
from thinktuning.models.load import is_adapter_dir, load_model
from thinktuning.models.lora import adapters_off, base_reference
from thinktuning.models.resolve import ResolvedModel, resolve
from thinktuning.teacher.build import needs_frozen_student
from thinktuning.train.logprobs import collate, token_logprobs

LORA = ["lora.enabled=true", "lora.r=4", "lora.alpha=8", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _probe(tokenizer):
    """A fixed prompt/response pair to compare models' log-probabilities on."""
    prompt = tokenizer("What is 2 + 3?", add_special_tokens=False)["input_ids"]
    response = tokenizer(" The answer is 5, because 2 and 3 make 5.", add_special_tokens=False)["input_ids"]
    return collate([prompt], [response], tokenizer.pad_token_id)


def _ptrs(model) -> set[int]:
    return {p.data_ptr() for p in model.parameters()}


@pytest.fixture(scope="module")
def lora_run(tiny_student, tmp_path_factory):
    """Three LoRA steps with forced guidance and a KL term (so teacher and reference are both used), checkpoint
    after each step."""
    run = tmp_path_factory.mktemp("lora") / "run"
    cfg = _tiny_cfg(tiny_student, run, [*LORA, "loss.kl_coef=0.05", "save_every=1"])
    trainer = ThinkTuningTrainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    history = trainer.train()
    return {"trainer": trainer, "model": model, "before": before, "history": history, "run": run}


def test_only_adapters_change_and_the_optimizer_holds_only_them(lora_run):
    model, before = lora_run["model"], lora_run["before"]
    assert sum(m["guidance/guided"] for m in lora_run["history"]) > 0
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    changed = {k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])}
    assert changed, "no adapter weight changed in three steps"
    assert changed <= trainable, f"base weights changed: {sorted(changed - trainable)[:3]}"
    in_optimizer = {id(p) for group in lora_run["trainer"].optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_teacher_and_reference_are_the_student_itself(lora_run):
    trainer, model = lora_run["trainer"], lora_run["model"]
    assert trainer.teacher.inner.model is model and trainer.ref_model is model
    # no second copy anywhere: every tensor the three hold is one of the student's
    held = _ptrs(model) | _ptrs(trainer.teacher.inner.model) | _ptrs(trainer.ref_model)
    assert held == _ptrs(model)
    # the teacher ran (guided steps) and left the adapters trainable and the model in training mode
    assert all(p.requires_grad for k, p in model.named_parameters() if "lora_" in k)
    assert model.training


def test_adapters_off_is_the_initial_student_after_training(lora_run, tiny_student):
    trainer, model = lora_run["trainer"], lora_run["model"]
    batch = _probe(trainer.tokenizer)
    initial = load_model(resolve(tiny_student))
    with torch.no_grad():
        want = token_logprobs(initial, batch)
        with adapters_off(model):
            base = token_logprobs(model, batch)
        trained = token_logprobs(model, batch)
    assert torch.allclose(base, want, atol=1e-6)
    assert not torch.allclose(trained, want, atol=1e-4), "the adapters changed nothing the probe can see"


def test_checkpoint_holds_the_adapter_and_loads_as_the_trained_model(lora_run, tiny_student):
    run, model = lora_run["run"], lora_run["model"]
    ckpt = run / "checkpoints" / "step-000003"
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin"}, "a LoRA checkpoint must not hold full weights"
    assert is_adapter_dir(ckpt)
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_reference(resolve(tiny_student))
    merged = load_model(resolve(str(ckpt)))
    assert not hasattr(merged, "peft_config"), "load_model must give a plain model for inference"
    batch = _probe(lora_run["trainer"].tokenizer)
    with torch.no_grad():
        assert torch.allclose(token_logprobs(merged, batch), token_logprobs(model, batch), atol=1e-5)


def test_thinktuning_eval_takes_the_lora_run_folder(lora_run, tmp_path):
    from thinktuning.cli import main

    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(lora_run["run"]), "--benchmarks", "arithmetic", "--limit", "3",
                 "--max-new-tokens", "8", "--output", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["model"]["checkpoint"].endswith("step-000003") and res["model"]["step"] == 3
    assert len(res["benchmarks"]["arithmetic"]["items"]) == 3


def test_resume_continues_exactly(lora_run, tiny_student, tmp_path):
    straight = lora_run["history"]
    run = tmp_path / "resumed"
    shutil.copytree(lora_run["run"], run)
    shutil.rmtree(run / "checkpoints" / "step-000003")
    resumed = ThinkTuningTrainer(
        _tiny_cfg(tiny_student, run, [*LORA, "loss.kl_coef=0.05", "save_every=1"]), resume=True
    )
    assert resumed.start_step == 2
    (last,) = resumed.train()
    # compared as JSON text: a NaN metric (no guided rollout) equals itself there, not in a dict comparison
    assert json.dumps(_comparable([last]), sort_keys=True) == json.dumps(_comparable(straight[2:]), sort_keys=True)
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_with_the_other_kind_of_checkpoint_is_refused(lora_run, tiny_student, tmp_path):
    run = tmp_path / "mixed"
    shutil.copytree(lora_run["run"], run)
    with pytest.raises(ConfigError, match=r"holds a LoRA adapter; resume it with lora\.enabled=true"):
        ThinkTuningTrainer(_tiny_cfg(tiny_student, run, ["save_every=1"]), resume=True)


def test_lora_config_is_validated_and_drops_the_frozen_copy():
    cfg = load_config("cpu-demo", ["lora.enabled=true", "lora.target_modules=q_proj,v_proj"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert not needs_frozen_student(cfg)
    assert needs_frozen_student(load_config("cpu-demo"))
    assert any(d.startswith("lora.enabled") for d in cfg.deviations())
    for bad, message in [("lora.r=0", r"lora\.r must be >= 1"), ("lora.dropout=1.0", r"lora\.dropout must be in"),
                         ("lora.alpha=0", r"lora\.alpha must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            load_config("cpu-demo", [bad])


def test_unknown_target_module_is_a_config_error(tiny_student, tmp_path):
    cfg = _tiny_cfg(tiny_student, tmp_path / "run", ["lora.enabled=true", "lora.target_modules=no_such_proj"])
    with pytest.raises(ConfigError, match=r"lora\.target_modules"):
        ThinkTuningTrainer(cfg)


def test_base_reference_is_portable(tiny_student, monkeypatch, tmp_path):
    embedded = ResolvedModel("smollm2-135m-instruct", "/cache/x", kind="embedded")
    assert base_reference(embedded) == "smollm2-135m-instruct"
    assert base_reference(ResolvedModel("org/model", "org/model", kind="hub")) == "org/model"
    monkeypatch.chdir(tmp_path)
    assert base_reference(ResolvedModel("./a/b", "./a/b", kind="folder")) == str(tmp_path / "a" / "b")
