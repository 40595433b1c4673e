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
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    code = main(["train", "--output-dir", str(run), "--max-steps", "1"])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_eval_names_its_own_flag_for_a_bad_base_url(capsys):
    # eval has no teacher: a bad --base-url must not be reported as teacher.base_url
    code = main(["eval", "--model", "smollm2-135m-instruct", "--backend", "openai", "--base-url", "ftp://host",
                 "--benchmarks", "arithmetic", "--limit", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--base-url='ftp://host' is not an http(s) URL" in err
    assert "teacher" not in err
