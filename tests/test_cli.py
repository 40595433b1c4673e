"""The command line turns user mistakes into one clear line and exit code 2."""

from __future__ import annotations

import pytest

from thinktuning.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "rollout.grup_size=3"], "rollout.group_size"),
        (["--set", "loss.shaping=foo"], "'aas', 'aas-recipe', 'luffy', 'none'"),
        (["--set", "rollout.group_size=1"], "group_size must be >= 2"),
        (["--config", "cpu-dmeo"], "cpu-demo"),
        (["--set", "model.student=./no/such/model"], "no such file or folder"),
        (["--set", "data.levels=[1,"], "--set data.levels=[1,: not valid YAML (while parsing a flow node: expected"),
        (["--set", "guidance.schedule=constant", "--set", "guidance.p_start=0.05", "--set", "guidance.p_end=0.05"],
         "guidance.p_start=0.05 is at or below the cutoff guidance.p_end + guidance.cutoff_epsilon = 0.1"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, expected):
    code = main(["train", "--output-dir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err


def test_paper_preset_validates_and_fails_only_on_missing_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the preset would start for real")
    code = main(["train", "--config", "paper-3b", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA GPU is visible" in err


def test_existing_run_folder_is_refused(tmp_path, capsys):
    from thinktuning.run.folder import write_marker

    run = tmp_path / "run"
    run.mkdir()
    write_marker(run)
    (run / "config.yaml").write_text("seed: 0\n")
    code = main(["train", "--output-dir", str(run), "--max-steps", "1"])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_overwrite_of_a_folder_that_is_not_a_run_is_refused_and_deletes_nothing(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    files = {"config.yaml": "name: my project\n", "src/main.py": "print('hi')\n", "data.csv": "a,b\n1,2\n"}
    for name, text in files.items():
        (project / name).write_text(text)
    code = main(["train", "--output-dir", str(project), "--overwrite", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err == (f"error: --overwrite refused: {project} is not a thinktuning run folder (no run.json written by "
                   "thinktuning); remove it yourself or choose another --output-dir\n")
    assert {str(p.relative_to(project)) for p in project.rglob("*")} == {"config.yaml", "src", "src/main.py",
                                                                          "data.csv"}
    assert all((project / name).read_text() == text for name, text in files.items())


def test_a_key_in_the_place_of_the_key_variable_is_refused_without_being_echoed(tmp_path, capsys):
    key = "sk-proj-SECRET-0123456789"
    code = main(["eval", "--model", "m", "--backend", "openai", "--base-url", "http://127.0.0.1:1/v1",
                 "--api-key-env", key, "--benchmarks", "arithmetic", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --api-key-env must name the environment variable that holds the key")
    assert key not in err and "got a value of 25 characters" in err
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--set", "teacher.backend=http",
                 "--set", "teacher.base_url=http://127.0.0.1:1/v1", "--set", f"teacher.api_key_env={key}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: teacher.api_key_env must name the environment variable")
    assert key not in err


def test_eval_names_its_own_flag_for_a_bad_base_url(capsys):
    # eval has no teacher: a bad --base-url must not be reported as teacher.base_url
    code = main(["eval", "--model", "smollm2-135m-instruct", "--backend", "openai", "--base-url", "ftp://host",
                 "--benchmarks", "arithmetic", "--limit", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--base-url='ftp://host' is not an http(s) URL" in err
    assert "teacher" not in err


def test_a_dataset_that_is_not_utf8_is_one_line_even_with_skip(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"question": "Caf\xe9?", "answer": "#### 2"}\n')
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--set", "data.name=gsm8k", "--set",
                 f"data.source={data}", "--set", "data.on_bad_row=skip"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {data}: line 1 is not UTF-8 text (byte 0xe9 at column ")


def test_an_output_dir_that_cannot_be_created_is_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["train", "--output-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err == (f"error: --output-dir {blocker / 'run'} cannot be created: {blocker} is a file, not a folder. "
                   "Choose another --output-dir\n")
