"""Bad things that happen during a run get a clear error or a counted, logged fallback, never a poisoned state:
a NaN/inf loss, a diverged model at checkpoint time, lengths beyond a model's context, a teacher that writes
garbage, references math-verify cannot parse, crash leftovers in the checkpoint folder."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time

import pytest
import torch

import thinktuning.train.update as update_module
from tests.run.test_checkpoint import training_parts
from tests.train.test_trainer import _tiny_cfg, _tiny_student
from thinktuning import ThinkTuningTrainer
from thinktuning.cli import main
from thinktuning.errors import CheckpointError, ConfigError
from thinktuning.guidance.guide import TeacherWatch
from thinktuning.jsonl import read_jsonl
from thinktuning.rewards.checker import AnswerChecker
from thinktuning.run.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from thinktuning.teacher.base import TeacherResult
from thinktuning.teacher.model import ModelTeacher
from thinktuning.teacher.prompt import parse_feedback


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


def _params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


# --- NaN / inf in the loss ---------------------------------------------------------------------------------


def test_nan_loss_skips_the_whole_update_logs_it_and_training_goes_on(tmp_path, tiny_student, monkeypatch, caplog):
    run = tmp_path / "run"
    trainer = ThinkTuningTrainer(_tiny_cfg(tiny_student, run, ["save_every=1"]))
    real_loss, real_step = update_module.policy_loss, trainer.step
    poisoned = {"step": None}
    seen = {}

    def loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        if poisoned["step"]:
            out.loss = out.loss * float("nan")  # still attached to the graph, as a real overflow would be
        return out

    def step(i):
        poisoned["step"] = i == 1
        before, adam = _params(trainer), {k: float(v["step"]) for k, v in trainer.optimizer.state.items()}
        out = real_step(i)
        seen[i] = (before, adam, _params(trainer), {k: float(v["step"]) for k, v in trainer.optimizer.state.items()})
        return out

    monkeypatch.setattr(update_module, "policy_loss", loss)
    monkeypatch.setattr(trainer, "step", step)
    with caplog.at_level(logging.WARNING, logger="thinktuning.train.trainer"):
        history = trainer.train()

    ok, bad, after = history
    assert bad["loss/updates_skipped"] == 1 and math.isnan(bad["loss"]) and math.isnan(bad["grad_norm"])
    assert ok["loss/updates_skipped"] == 0 == after["loss/updates_skipped"]
    assert math.isfinite(after["loss"]) and math.isfinite(after["grad_norm"])
    assert after["reward/unparsed_references"] == 0  # arithmetic references are integers
    before, adam_before, params_after, adam_after = seen[1]
    assert all(torch.equal(before[k], params_after[k]) for k in before), "a poisoned update was applied"
    assert adam_before == adam_after, "the optimizer stepped on a poisoned update"
    assert not all(torch.equal(seen[2][0][k], seen[2][2][k]) for k in before), "training stopped updating"
    warnings = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(warnings) == 1 and "non-finite loss (nan)" in warnings[0]
    logged = read_jsonl(run / "metrics.jsonl")
    assert logged[1]["loss"] is None and logged[1]["loss/updates_skipped"] == 1  # NaN is written as null
    assert [p.name for p in list_checkpoints(run)][-1] == "step-000003"


def test_a_checkpoint_of_a_model_holding_nan_is_refused_and_the_previous_stays(tmp_path, make_model, smol_tokenizer):
    model, opt, sched = training_parts(make_model)
    first = save_checkpoint(tmp_path, 1, model, smol_tokenizer, opt, sched, {}, keep_last=1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path, 2, model, smol_tokenizer, opt, sched, {}, keep_last=1)
    message = str(info.value)
    assert message.startswith("refusing to write checkpoint step 2") and "NaN/inf" in message
    assert "step-000001 is intact" in message and "--resume" in message
    assert list_checkpoints(tmp_path) == [first] and latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]


# --- crash leftovers -----------------------------------------------------------------------------------------


def test_crash_leftovers_are_removed_and_pruning_never_leaves_half_a_checkpoint(
    tmp_path, make_model, smol_tokenizer, monkeypatch
):
    parts = training_parts(make_model)
    model, opt, sched = parts
    root = tmp_path / "checkpoints"
    for name in (".tmp-step-000007", ".tmp-delete-step-000001"):  # a write and a prune cut by SIGKILL
        (root / name).mkdir(parents=True)
        (root / name / "junk").write_text("x")
    save_checkpoint(tmp_path, 1, model, smol_tokenizer, opt, sched, {}, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]

    # pruning renames the old checkpoint away before deleting it: a crash mid-delete leaves only a .tmp-* folder
    def crash(path, *args, **kwargs):
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, smol_tokenizer, opt, sched, {}, keep_last=1)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    assert (root / ".tmp-delete-step-000001").is_dir()
    save_checkpoint(tmp_path, 3, model, smol_tokenizer, opt, sched, {}, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000003"]


# --- lengths beyond a model's context ------------------------------------------------------------------------


def _small_context(student: str, folder, positions: int) -> str:
    shutil.copytree(student, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_lengths_beyond_the_students_context_stop_the_run(tmp_path, tiny_student):
    student = _small_context(tiny_student, tmp_path / "small", 256)
    with pytest.raises(ConfigError) as info:
        ThinkTuningTrainer(_tiny_cfg(student, tmp_path / "run"))
    assert str(info.value).startswith(
        "rollout.max_prompt_length (192) + rollout.max_new_tokens (24) + teacher.max_feedback_tokens (512) = 728 "
        "tokens (the longest guided rollout) exceed the student's context"
    )
    assert "of 256 tokens" in str(info.value)


def test_the_teachers_prompt_counts_too(tmp_path, tiny_student):
    student = _small_context(tiny_student, tmp_path / "small", 512)
    fits = ["rollout.max_prompt_length=128", "teacher.max_feedback_tokens=64"]  # 128 + 24 + 64 <= 512
    with pytest.raises(ConfigError, match=r"the teacher's instructions and demonstrations \(\d+\) \+ .* exceed the "
                                          r"teacher's context \(student-init\) of 512 tokens"):
        ThinkTuningTrainer(_tiny_cfg(student, tmp_path / "run", fits))
    # plain GRPO asks no teacher: the same lengths are fine
    trainer = ThinkTuningTrainer(_tiny_cfg(student, tmp_path / "grpo", [*fits, "guidance.enabled=false"]))
    trainer.close()




# --- a teacher that writes garbage ---------------------------------------------------------------------------

GOOD = "<opinion>correct</opinion><reason>I checked it.</reason><phrase>So \\boxed{1}.</phrase>"
GARBAGE = [
    "", "<opinion>maybe</opinion><reason>x</reason><phrase>\\boxed{1}</phrase>",
    "<opinion>correct</opinion><reason></reason><phrase>\\boxed{1}</phrase>", "\x00\ufffd<<<>>>",
    "<opinion>correct</opinion><reason>ok</reason><phrase>no answer here</phrase>",
]


def test_garbage_teacher_output_is_counted_as_no_feedback_and_warned_about_once(
    tmp_path, tiny_student, monkeypatch, caplog
):
    def garbage(self, cases):
        raws = [GARBAGE[i % len(GARBAGE)] for i in range(len(cases))]
        return [TeacherResult(parse_feedback(raw), raw, "unusable") for raw in raws]

    monkeypatch.setattr(ModelTeacher, "_feedback_batch", garbage)
    run = tmp_path / "run"
    trainer = ThinkTuningTrainer(_tiny_cfg(tiny_student, run))
    trainer.guide.watch.silent_steps = 2
    with caplog.at_level(logging.WARNING, logger="thinktuning.train.trainer"):
        history = trainer.train()
    assert all(m["guidance/guided"] == 0 and m["guidance/no_feedback"] > 0 for m in history)
    assert all(math.isfinite(m["loss"]) for m in history)
    broken = [r.getMessage() for r in caplog.records if "seems broken" in r.getMessage()]
    assert len(broken) == 1
    assert "in the last 2 guided steps (up to step 2)" in broken[0] and "guidance/no_feedback" in broken[0]
    asked = [r for r in read_jsonl(run / "rollouts.jsonl") if r["no_feedback"]]
    assert asked and all(r["teacher_raw"] in GARBAGE and not r["guided"] for r in asked)


def test_one_usable_answer_resets_the_teacher_watch(caplog):
    watcher = TeacherWatch(silent_steps=2)
    silent = [TeacherResult(None, "garbage")]
    some = [TeacherResult(None, "garbage"), TeacherResult(parse_feedback(GOOD), GOOD)]
    with caplog.at_level(logging.WARNING, logger="thinktuning.guidance.guide"):
        for step, results in enumerate([silent, some, silent, some, silent]):
            watcher(results, step)
        assert "seems broken" not in caplog.text
        watcher(silent, 5)
        watcher(silent, 6)
    assert caplog.text.count("seems broken") == 1


def test_teacher_model_that_does_not_exist_is_one_clear_line(tmp_path, tiny_student, capsys):
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--set", f"model.student={tiny_student}",
                 "--set", "teacher.model=./no/such/teacher"])
    last = capsys.readouterr().err.splitlines()[-1]  # after the student's loading progress bar
    assert code == 2 and last.startswith("error: model './no/such/teacher': no such file or folder")


# --- the answer checker -------------------------------------------------------------------------------------


def test_checker_worker_ignores_ctrl_c_so_the_step_being_finished_keeps_correct_rewards():
    # Ctrl-C in a terminal signals the whole process group, the checker's worker process included
    with AnswerChecker() as checker:
        assert checker.check("0.5", "\\frac{1}{2}")
        worker = checker._holder["worker"].proc
        os.kill(worker.pid, signal.SIGINT)
        time.sleep(0.3)
        assert worker.poll() is None
        assert checker.check("0.25", "\\frac{1}{4}") and checker._holder["worker"].proc is worker
        assert checker.errors == 0 and checker.timeouts == 0


# --- references math-verify cannot parse ---------------------------------------------------------------------


def test_unparsable_reference_is_compared_as_text_counted_and_warned_once(caplog):
    with caplog.at_level(logging.WARNING, logger="thinktuning.rewards"), AnswerChecker() as checker:
        assert checker.check_many(["5", "}{", "6"], ["}{", "}{", "}{"]) == [False, True, False]
        assert checker.check("}{ ", "}{")  # equal text after spacing
        assert not checker.check("7", "}{")
        assert checker.check("\\frac{1}{2}", "0.5")
        assert checker.unparsed_references == {"}{"}
    warnings = [r.getMessage() for r in caplog.records if "cannot parse the reference" in r.getMessage()]
    assert len(warnings) == 1 and "'}{'" in warnings[0] and "reward/unparsed_references" in warnings[0]


def test_resume_before_any_checkpoint_starts_again_and_logs_each_step_once(tmp_path, tiny_student, caplog):
    run = tmp_path / "run"
    cfg = _tiny_cfg(tiny_student, run, ["save_every=0"])
    first = ThinkTuningTrainer(cfg)  # killed during step 3, before its only (final) checkpoint
    first.metrics_out.write({"step": 1, "note": "from the killed run"})
    first.metrics_out.write({"step": 2, "note": "from the killed run"})
    first.close()
    with caplog.at_level(logging.WARNING, logger="thinktuning.train.trainer"):
        again = ThinkTuningTrainer(cfg, resume=True)
    assert again.start_step == 0 and "no complete checkpoint yet" in caplog.text
    again.train()
    logged = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in logged] == [1, 2, 3] and not any("note" in m for m in logged)


def _without_chat_template(student: str, folder) -> str:
    shutil.copytree(student, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["reward.functions=no_such_module_xyz:f"], "error: cannot import module 'no_such_module_xyz'"),
        (["teacher.model=NO_CHAT_TEMPLATE"], "error: the tokenizer of '"),
        (["model.student=NO_CHAT_TEMPLATE"], "error: the tokenizer of '"),
    ],
)
def test_unusable_models_and_reward_functions_are_one_clear_line(tmp_path, tiny_student, capsys, sets, expected):
    plain = _without_chat_template(tiny_student, tmp_path / "plain")
    argv = ["train", "--output-dir", str(tmp_path / "run"), "--set", f"model.student={tiny_student}"]
    for item in sets:
        argv += ["--set", item.replace("NO_CHAT_TEMPLATE", plain)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(expected), err[-500:]


def test_hub_model_that_cannot_be_loaded_is_explained(monkeypatch):
    from transformers import AutoTokenizer

    from thinktuning.errors import ModelNotFoundError
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import ResolvedModel

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore detail")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer(ResolvedModel("org/model", "org/model", kind="hub"))
    message = str(info.value)
    assert message.startswith("model 'org/model': not a local file or folder, and loading it from the Hugging Face hub")
    assert "couldn't connect" in message and "more detail" not in message and "HF_TOKEN" in message
