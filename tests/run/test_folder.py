"""The run folder: refusing to mix runs, JSON lines that survive NaN and crashes, the progress line."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from thinktuning.config.load import load_config
from thinktuning.errors import RunFolderError
from thinktuning.jsonl import JsonlWriter, read_jsonl, truncate_jsonl
from thinktuning.run.folder import (
    foreign_entries,
    is_run_folder,
    prepare_run_dir,
    progress_line,
    protected_reason,
    write_marker,
    write_run_header,
)


def make_run_folder(path):
    path.mkdir(parents=True)
    write_marker(path)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (links not followed) with its bytes (None for a folder or a link)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------------ prepare_run_dir


def test_new_folder_is_created(tmp_path) -> None:
    run = prepare_run_dir(tmp_path / "a" / "b", resume=False, overwrite=False)
    assert run == tmp_path / "a" / "b"
    assert run.is_dir()


def test_existing_empty_folder_is_used(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    assert prepare_run_dir(tmp_path / "empty", resume=False, overwrite=False).is_dir()


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    with pytest.raises(RunFolderError) as info:
        prepare_run_dir(run, resume=False, overwrite=False)
    message = str(info.value)
    assert "already holds a previous run" in message
    assert "--resume" in message
    assert "--overwrite" in message
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched


def test_folder_with_other_files_is_refused(tmp_path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RunFolderError, match="already holds other files"):
        prepare_run_dir(other, resume=False, overwrite=False)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RunFolderError) as info:
        prepare_run_dir(other, resume=False, overwrite=True)
    assert "--overwrite refused" in str(info.value)
    assert "no run.json written by thinktuning" in str(info.value)
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_overwrite_replaces_a_run_folder(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    for name in ("rollouts.jsonl", "report.html", "eval.json", "eval_results.json", "eval_results_gsm8k.json"):
        (run / name).write_text("x")
    (run / "tensorboard").mkdir()
    out = prepare_run_dir(run, resume=False, overwrite=True)
    assert out == run
    assert run.is_dir()
    assert [p.name for p in run.iterdir()] == ["run.json"]  # emptied, then marked again as a new run
    assert is_run_folder(run)


def test_a_project_folder_holding_a_config_yaml_is_not_a_run(tmp_path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("name: my project\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    before = snapshot(project)
    assert not is_run_folder(project)
    with pytest.raises(RunFolderError, match=r"--overwrite refused: .* is not a thinktuning run folder"):
        prepare_run_dir(project, resume=False, overwrite=True)
    with pytest.raises(RunFolderError, match=r"--resume refused: .* is not a thinktuning run folder"):
        prepare_run_dir(project, resume=True, overwrite=False)
    with pytest.raises(RunFolderError, match="already holds other files"):
        prepare_run_dir(project, resume=False, overwrite=False)
    assert snapshot(project) == before


def test_a_json_file_named_run_json_that_is_not_ours_is_no_marker(tmp_path) -> None:
    other = tmp_path / "web"
    other.mkdir()
    (other / "run.json").write_text('{"name": "my script", "versions": "1.0"}')
    (other / "config.yaml").write_text("x: 1\n")
    assert not is_run_folder(other)
    with pytest.raises(RunFolderError, match="not a thinktuning run folder"):
        prepare_run_dir(other, resume=False, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "run.json"]


def test_a_run_of_an_earlier_version_is_still_a_run(tmp_path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("seed: 0\n")
    (old / "run.json").write_text(json.dumps({"preset": "cpu-demo", "deviations_from_paper": [],
                                              "versions": {"python": "3.11.9"}}))
    (old / "metrics.jsonl").write_text('{"step": 1}\n')
    assert is_run_folder(old)
    assert prepare_run_dir(old, resume=True, overwrite=False) == old
    assert (old / "metrics.jsonl").is_file()
    prepare_run_dir(old, resume=False, overwrite=True)
    assert [p.name for p in old.iterdir()] == ["run.json"]


def test_overwrite_refuses_a_run_that_also_holds_other_files_and_names_them(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    (run / "notes.txt").write_text("my notes")
    (run / "analysis").mkdir()
    (run / "checkpoints").write_text("a file where our folder would be")
    before = snapshot(run)
    assert foreign_entries(run) == ["analysis", "checkpoints", "notes.txt"]
    with pytest.raises(RunFolderError) as info:
        prepare_run_dir(run, resume=False, overwrite=True)
    message = str(info.value)
    assert "--overwrite refused" in message and "(analysis, checkpoints, notes.txt)" in message
    assert "deletes only a run's own files" in message
    assert snapshot(run) == before


def test_overwrite_removes_symlinks_and_never_touches_their_targets(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    run = make_run_folder(tmp_path / "run")
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)  # a run-owned name, linked out
    step = run / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    (step / "weights").symlink_to(outside, target_is_directory=True)  # deep inside a run folder
    (run / "report.html").symlink_to(outside / "precious.txt")
    prepare_run_dir(run, resume=False, overwrite=True)
    assert [p.name for p in run.iterdir()] == ["run.json"]
    assert (outside / "precious.txt").read_text() == "keep me"
    assert [p.name for p in outside.iterdir()] == ["precious.txt"]


def test_the_current_folder_and_its_ancestors_are_never_overwritten(tmp_path, monkeypatch) -> None:
    run = make_run_folder(tmp_path / "run")
    (run / "checkpoints").mkdir()
    before = snapshot(run)
    monkeypatch.chdir(run)
    with pytest.raises(RunFolderError, match=r"is the current folder \('\.'\), which is never deleted"):
        prepare_run_dir(".", resume=False, overwrite=True)
    with pytest.raises(RunFolderError, match="is the current folder, which is never deleted"):
        prepare_run_dir(run, resume=False, overwrite=True)
    monkeypatch.chdir(run / "checkpoints")
    with pytest.raises(RunFolderError, match="is an ancestor of the current folder"):
        prepare_run_dir("..", resume=False, overwrite=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(run / "checkpoints", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "link")  # the ancestor is found through a symlinked current folder too
    with pytest.raises(RunFolderError, match="is an ancestor of the current folder"):
        prepare_run_dir(run, resume=False, overwrite=True)
    assert snapshot(run) == before


def test_the_home_folder_is_never_overwritten(tmp_path, monkeypatch) -> None:
    home = make_run_folder(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFolderError, match="is your home folder"):
        prepare_run_dir(home, resume=False, overwrite=True)
    assert (home / "metrics.jsonl").is_file()


@pytest.mark.parametrize(("path", "reason"), [
    (".", "the current folder ('.')"),
    ("/", "the root folder"),
    ("/w/proj", "the current folder"),
    ("/w", "an ancestor of the current folder"),
    ("/home/me", "your home folder"),
    ("/w/proj/runs/x", None),
    ("/home/me/runs/x", None),
])
def test_protected_reason(path, reason) -> None:
    assert protected_reason(Path(path), Path("/w/proj"), Path("/home/me")) == reason


def test_resume_of_a_missing_folder_warns_and_starts_a_new_run(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="thinktuning.run.folder"):
        run = prepare_run_dir(tmp_path / "nope", resume=True, overwrite=False)
    assert "--resume: " in caplog.text and "does not exist; starting a new run from step 0" in caplog.text
    assert is_run_folder(run)


def test_a_folder_holding_only_the_creation_marker_is_reused(tmp_path) -> None:
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)  # then stopped before anything else
    assert is_run_folder(run)
    assert prepare_run_dir(run, resume=False, overwrite=False) == run


def test_resume_keeps_the_run_folder(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    out = prepare_run_dir(run, resume=True, overwrite=False)
    assert out == run
    assert (run / "config.yaml").read_text() == "seed: 0\n"
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_resume_wins_over_overwrite(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    prepare_run_dir(run, resume=True, overwrite=True)
    assert (run / "metrics.jsonl").is_file()


def test_output_path_that_is_a_file_is_a_run_folder_error(tmp_path) -> None:
    path = tmp_path / "results.txt"
    path.write_text("x")
    with pytest.raises(RunFolderError):
        prepare_run_dir(path, resume=False, overwrite=False)


# ----------------------------------------------------------------------------------------------- headers


def test_run_header_records_config_and_deviations(tmp_path) -> None:
    cfg = load_config("cpu-demo")
    write_run_header(tmp_path, cfg, {"examples": 12})
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["tool"] == "thinktuning" and info["version"]
    assert is_run_folder(tmp_path)
    assert info["preset"] == "cpu-demo"
    assert info["examples"] == 12
    assert info["deviations_from_paper"] == cfg.deviations()
    assert "torch" in info["versions"]
    reloaded = load_config(str(tmp_path / "config.yaml"))
    assert reloaded.to_dict() == cfg.to_dict()


def test_a_password_in_the_teacher_url_is_saved_neither_in_config_yaml_nor_in_run_json(tmp_path) -> None:
    cfg = load_config("cpu-demo", ["teacher.backend=http", "teacher.base_url=http://user:key-4242@gpu-box:8000/v1"])
    write_run_header(tmp_path, cfg, {"teacher": {"base_url": cfg.teacher.base_url}})
    for name in ("config.yaml", "run.json"):
        text = (tmp_path / name).read_text()
        assert "user:key-4242" not in text and "key-4242" not in text, name
        assert "http://***@gpu-box:8000/v1" in text, name
    assert load_config(str(tmp_path / "config.yaml")).teacher.base_url == "http://***@gpu-box:8000/v1"


# ------------------------------------------------------------------------------------------------- jsonl


def test_jsonl_writer_writes_nan_and_inf_as_null(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    w = JsonlWriter(path)
    w.write({"step": 1, "loss": math.nan, "grad_norm": math.inf, "reward/mean": 0.25, "note": "ok"})
    w.write({"step": 2, "loss": -math.inf})
    w.close()
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    lines = text.splitlines()
    assert len(lines) == 2
    first = {"step": 1, "loss": None, "grad_norm": None, "reward/mean": 0.25, "note": "ok"}
    assert json.loads(lines[0]) == first
    assert json.loads(lines[1]) == {"step": 2, "loss": None}


def test_jsonl_writer_appends_and_flushes_each_line(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n')
    w = JsonlWriter(path)
    w.write({"step": 1})
    # readable before close: flushed per write
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    w.close()


def test_truncate_drops_later_steps_and_a_cut_last_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 0.5}\n'
        '{"step": 2, "loss": 0.4}\n'
        '{"step": 3, "loss": 0.3}\n'
        '{"step": 4, "lo'  # cut by a crash
    )
    truncate_jsonl(path, last_step=2)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def test_truncate_keeps_records_without_step(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"note": "header"}\n{"step": 5}\n')
    truncate_jsonl(path, last_step=4)
    assert read_jsonl(path) == [{"note": "header"}]


def test_truncate_of_missing_file_is_a_no_op(tmp_path) -> None:
    truncate_jsonl(tmp_path / "none.jsonl", last_step=3)
    assert not (tmp_path / "none.jsonl").exists()


def test_read_jsonl_skips_blank_lines(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


# ---------------------------------------------------------------------------------------------- progress

METRICS = {
    "step": 3,
    "reward/mean": 0.5,
    "accuracy": 0.25,
    "guidance/guided": 2,
    "guidance/no_feedback": 1,
    "loss": -0.0123,
    "grad_norm": 1.5,
    "time/step": 2.34,
}


def test_progress_line_fields() -> None:
    line = progress_line(METRICS, 16, 90.0)
    assert line.startswith("step 3/16 | ")
    assert "reward 0.500" in line
    assert "acc 0.250" in line
    assert "guided 2 (no feedback 1)" in line
    assert "loss -0.0123" in line
    assert "gnorm 1.500" in line
    assert "| 2.3s |" in line
    assert line.endswith("eta 1.5min")  # 90 s


def test_progress_line_without_eta() -> None:
    assert progress_line(METRICS, 16, None).endswith("eta ?")
