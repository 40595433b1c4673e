"""Atomic checkpoints: complete or absent, pruning, resume state, failures that leave the last one intact."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from thinktuning.errors import CheckpointError
from thinktuning.run import checkpoint as ckpt
from thinktuning.run.checkpoint import latest_checkpoint, list_checkpoints, load_training_state, save_checkpoint

FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")


def training_parts(make_model, seed: int = 0, steps: int = 1):
    """A tiny model, AdamW and a constant scheduler, after ``steps`` optimizer steps (so Adam has state)."""
    from transformers import get_scheduler

    model = make_model(seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = get_scheduler("constant", optimizer=opt)
    ids = torch.tensor([[5, 6, 7, 8]])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


@pytest.fixture
def parts(make_model):
    return training_parts(make_model)


def save(run: Path, step: int, parts, tokenizer, keep_last: int = 2) -> Path:
    model, opt, sched = parts
    return save_checkpoint(run, step, model, tokenizer, opt, sched, {"total_steps": 10, "seed": 0}, keep_last)


def test_save_writes_a_complete_folder(tmp_path, parts, smol_tokenizer) -> None:
    path = save(tmp_path, 3, parts, smol_tokenizer)
    assert path == tmp_path / "checkpoints" / "step-000003"
    for name in FILES:
        assert (path / name).is_file(), name
    assert (path / "tokenizer.json").is_file()
    state = json.loads((path / "trainer_state.json").read_text())
    assert state == {"total_steps": 10, "seed": 0, "step": 3}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]


def test_saved_model_loads_back_with_same_weights(tmp_path, parts, smol_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    path = save(tmp_path, 1, parts, smol_tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), (_, b) in zip(parts[0].state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_keep_last_prunes_oldest(tmp_path, parts, smol_tokenizer) -> None:
    for step in (1, 2, 3, 4):
        save(tmp_path, step, parts, smol_tokenizer, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    save(tmp_path, 5, parts, smol_tokenizer, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005"]


def test_saving_the_same_step_twice_replaces_it(tmp_path, parts, smol_tokenizer) -> None:
    model, opt, sched = parts
    save_checkpoint(tmp_path, 2, model, smol_tokenizer, opt, sched, {"note": "first"})
    save_checkpoint(tmp_path, 2, model, smol_tokenizer, opt, sched, {"note": "second"})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    state = json.loads((tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["note"] == "second"


def test_list_and_latest_order_by_step_number(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    for name in ("step-000010", "step-000009", "step-000100"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    (root / ".tmp-step-000200").mkdir()
    (root / "step-abc").mkdir()
    (root / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000009", "step-000010", "step-000100"]
    assert latest_checkpoint(tmp_path) == root / "step-000100"


def test_latest_ignores_incomplete_folders(tmp_path, parts, smol_tokenizer) -> None:
    save(tmp_path, 2, parts, smol_tokenizer)
    (tmp_path / "checkpoints" / "step-000007").mkdir()  # no trainer_state.json: a folder someone half-copied
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"


def test_latest_of_a_fresh_run_is_none(tmp_path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path) == []


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, parts, smol_tokenizer) -> None:
    (tmp_path / "checkpoints" / "step-000009").mkdir(parents=True)  # incomplete
    path = save(tmp_path, 4, parts, smol_tokenizer, keep_last=1)
    assert path.is_dir()
    assert latest_checkpoint(tmp_path) == path


def test_load_restores_optimizer_scheduler_rng_and_state(tmp_path, make_model, smol_tokenizer) -> None:
    trained = training_parts(make_model, seed=0, steps=2)
    path = save(tmp_path, 2, trained, smol_tokenizer)
    after_save = torch.rand(4)  # the draw right after the RNG state was captured

    # a fresh optimizer over an identical model: no Adam state yet
    _, opt2, sched2 = training_parts(make_model, seed=0, steps=0)
    assert opt2.state_dict()["state"] == {}
    state = load_training_state(path, opt2, sched2)
    assert state == {"total_steps": 10, "seed": 0, "step": 2}

    want, got = trained[1].state_dict(), opt2.state_dict()
    assert want["param_groups"] == got["param_groups"]
    assert want["state"].keys() == got["state"].keys()
    for k, s in want["state"].items():
        assert s.keys() == got["state"][k].keys()
        for name, value in s.items():
            assert torch.equal(value, got["state"][k][name]), (k, name)
    assert float(got["state"][0]["step"]) == 2.0
    assert sched2.state_dict()["last_epoch"] == 2
    assert torch.equal(torch.rand(4), after_save)


def test_no_space_keeps_previous_checkpoint_and_cleans_tmp(
    tmp_path, parts, smol_tokenizer, monkeypatch
) -> None:
    first = save(tmp_path, 1, parts, smol_tokenizer)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if Path(f).name == "optimizer.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        save(tmp_path, 2, parts, smol_tokenizer)
    message = str(info.value)
    assert "no space" in message
    assert "step-000001 is intact" in message
    assert "--resume" in message
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # no step-000002, no .tmp-step-000002
    for name in FILES:
        assert (first / name).is_file()
    assert latest_checkpoint(tmp_path) == first


def test_other_write_error_without_previous_checkpoint(tmp_path, parts, smol_tokenizer, monkeypatch) -> None:
    def denied(obj, f, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(CheckpointError) as info:
        save(tmp_path, 1, parts, smol_tokenizer)
    assert "could not write checkpoint step 1" in str(info.value)
    assert "no earlier checkpoint exists" in str(info.value)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_torch_disk_full_runtime_error_is_a_checkpoint_error(
    tmp_path, parts, smol_tokenizer, monkeypatch
) -> None:
    save(tmp_path, 1, parts, smol_tokenizer)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if Path(f).name == "optimizer.pt":
            raise RuntimeError(
                "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                "file write failed"
            )
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    try:
        with pytest.raises(CheckpointError):
            save(tmp_path, 2, parts, smol_tokenizer)
    finally:
        leftovers = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert leftovers == ["step-000001"]


def test_truncated_optimizer_file_is_a_checkpoint_error(tmp_path, parts, smol_tokenizer) -> None:
    path = save(tmp_path, 1, parts, smol_tokenizer)
    data = (path / "optimizer.pt").read_bytes()
    (path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    _, opt, sched = parts
    with pytest.raises(CheckpointError) as info:
        load_training_state(path, opt, sched)
    assert "unreadable" in str(info.value)
    assert "--overwrite" in str(info.value)


def test_missing_scheduler_file_is_a_checkpoint_error(tmp_path, parts, smol_tokenizer) -> None:
    path = save(tmp_path, 1, parts, smol_tokenizer)
    (path / "scheduler.pt").unlink()
    _, opt, sched = parts
    with pytest.raises(CheckpointError, match="FileNotFoundError"):
        load_training_state(path, opt, sched)


@pytest.mark.parametrize(
    "content",
    [b"this is not a torch file" * 4, bytes(range(256)) * 4, b""],
    ids=["text-IndexError", "binary-UnpicklingError", "empty-EOFError"],
)
def test_corrupt_optimizer_file_is_a_checkpoint_error(tmp_path, parts, smol_tokenizer, content) -> None:
    path = save(tmp_path, 1, parts, smol_tokenizer)
    (path / "optimizer.pt").write_bytes(content)
    _, opt, sched = parts
    with pytest.raises(CheckpointError):
        load_training_state(path, opt, sched)


def test_stale_tmp_folder_from_a_crash_is_replaced(tmp_path, parts, smol_tokenizer) -> None:
    stale = tmp_path / "checkpoints" / ".tmp-step-000003"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half written")
    path = save(tmp_path, 3, parts, smol_tokenizer)
    assert not stale.exists()
    assert not (path / "junk").exists()
    assert (path / "trainer_state.json").is_file()


def test_module_exposes_checkpoint_dir() -> None:
    assert ckpt.checkpoint_dir(Path("runs/x")) == Path("runs/x/checkpoints")


# ------------------------------------------------------------------------------------ a damaged checkpoint


def test_run_of_checkpoint_and_previous_checkpoint(tmp_path) -> None:
    root = tmp_path / "run" / "checkpoints"
    for name in ("step-000002", "step-000004", "step-000006"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    (root / "step-000005").mkdir()  # incomplete: never fallen back on
    assert ckpt.run_of_checkpoint(root / "step-000006") == tmp_path / "run"
    assert ckpt.run_of_checkpoint(tmp_path / "models" / "step-000006") is None
    assert ckpt.run_of_checkpoint(tmp_path / "run") is None
    assert ckpt.previous_checkpoint(root / "step-000006") == root / "step-000004"
    assert ckpt.previous_checkpoint(root / "step-000002") is None
    assert ckpt.previous_checkpoint(tmp_path / "elsewhere") is None


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _two_checkpoints(run: Path, parts, tokenizer) -> Path:
    save(run, 1, parts, tokenizer)
    last = save(run, 2, parts, tokenizer)
    _truncate(last / "model.safetensors")
    return last


def _unreadable(message: str, path: Path, fallback: str) -> None:
    assert message.startswith(f"checkpoint {path} is unreadable (SafetensorError: "), message
    assert f"delete it to resume from the one before ({fallback})" in message and "--overwrite" in message


def test_truncated_weights_end_a_resume_naming_the_previous_checkpoint(tmp_path, parts, smol_tokenizer) -> None:
    from thinktuning.config.schema import LoraConfig
    from thinktuning.models.load import load_model
    from thinktuning.models.lora import load_student
    from thinktuning.models.resolve import ResolvedModel

    last = _two_checkpoints(tmp_path / "run", parts, smol_tokenizer)
    with pytest.raises(CheckpointError) as info:  # the resume path: header check before any loading
        load_student(ResolvedModel("unused", "unused"), LoraConfig(), last)
    _unreadable(str(info.value), last, "step-000001")
    with pytest.raises(CheckpointError) as info:  # and the loader itself, should a damage pass the header check
        load_model(ResolvedModel(str(last), str(last)))
    _unreadable(str(info.value), last, "step-000001")


def test_a_run_with_only_a_damaged_checkpoint_says_there_is_none_before(tmp_path, parts, smol_tokenizer) -> None:
    from thinktuning.models.load import load_model
    from thinktuning.models.resolve import ResolvedModel

    only = save(tmp_path / "run", 1, parts, smol_tokenizer)
    _truncate(only / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"the one before \(there is none: it is the run's only complete"):
        load_model(ResolvedModel(str(only), str(only)))


def test_a_damaged_model_folder_outside_a_run_keeps_its_own_error(tmp_path, parts) -> None:
    from thinktuning.models.load import load_model
    from thinktuning.models.resolve import ResolvedModel

    folder = tmp_path / "models" / "step-000001"  # a checkpoint's name, but not inside RUN/checkpoints
    parts[0].save_pretrained(folder)
    _truncate(folder / "model.safetensors")
    with pytest.raises(Exception) as info:
        load_model(ResolvedModel(str(folder), str(folder)))
    assert not isinstance(info.value, CheckpointError)


def test_a_truncated_lora_adapter_ends_a_resume_and_an_eval(tmp_path, make_model, smol_tokenizer) -> None:
    import peft
    from transformers import get_scheduler

    from thinktuning.config.schema import LoraConfig
    from thinktuning.models.load import load_model
    from thinktuning.models.lora import load_student, peft_config
    from thinktuning.models.resolve import ResolvedModel

    base_dir = tmp_path / "base"
    make_model().save_pretrained(base_dir)
    base = ResolvedModel(str(base_dir), str(base_dir))
    lora = LoraConfig(enabled=True, r=2, alpha=4)
    model = peft.get_peft_model(load_model(base), peft_config(lora, str(base_dir)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    parts = (model, opt, get_scheduler("constant", optimizer=opt))
    save(tmp_path / "run", 1, parts, smol_tokenizer)
    last = save(tmp_path / "run", 2, parts, smol_tokenizer)
    assert (last / "adapter_model.safetensors").is_file() and not (last / "model.safetensors").exists()
    _truncate(last / "adapter_model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_student(base, lora, last)
    _unreadable(str(info.value), last, "step-000001")
    with pytest.raises(CheckpointError) as info:  # eval loads an adapter checkpoint merged into its base
        load_model(ResolvedModel(str(last), str(last)))
    _unreadable(str(info.value), last, "step-000001")


def test_eval_of_a_run_whose_last_checkpoint_is_truncated_is_one_error_line(
    tmp_path, parts, smol_tokenizer, capsys
) -> None:
    from thinktuning.cli import main

    run = tmp_path / "run"
    last = _two_checkpoints(run, parts, smol_tokenizer)
    code = main(["eval", "--model", str(run), "--benchmarks", "arithmetic", "--limit", "1", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    _unreadable(line.removeprefix("error: "), last, "step-000001")


def test_train_resume_from_a_truncated_checkpoint_is_one_error_line(tmp_path, smol_tokenizer, capsys) -> None:
    from tests.train.test_trainer import SMALL, _tiny_student
    from thinktuning.cli import main

    student = _tiny_student(tmp_path / "student", smol_tokenizer)
    run = tmp_path / "run"
    sets = [f"model.student={student}", *SMALL, "rollout.max_new_tokens=8", "guidance.enabled=false", "save_every=1"]
    argv = ["train", "--output-dir", str(run), "--max-steps", "2", "--quiet"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    last = run / "checkpoints" / "step-000002"
    _truncate(last / "model.safetensors")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    _unreadable(line.removeprefix("error: "), last, "step-000001")
