"""The run folder: refusing to mix runs, JSON lines that survive NaN and crashes, the progress line."""

from __future__ import annotations

import json
import math

import pytest

from thinktuning.config.load import load_config
from thinktuning.errors import RunFolderError
from thinktuning.jsonl import JsonlWriter, read_jsonl, truncate_jsonl
from thinktuning.run.folder import prepare_run_dir, progress_line, write_run_header


def make_run_folder(path):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    return path


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
    assert "no config.yaml" in str(info.value)
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_overwrite_replaces_a_run_folder(tmp_path) -> None:
    run = make_run_folder(tmp_path / "run")
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    out = prepare_run_dir(run, resume=False, overwrite=True)
    assert out == run
    assert run.is_dir()
    assert list(run.iterdir()) == []


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
    assert info["preset"] == "cpu-demo"
    assert info["examples"] == 12
    assert info["deviations_from_paper"] == cfg.deviations()
    assert "torch" in info["versions"]
    reloaded = load_config(str(tmp_path / "config.yaml"))
    assert reloaded.to_dict() == cfg.to_dict()


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
