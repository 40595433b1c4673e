"""``thinktuning push``: a real 1-step run (tiny student) is packed for the Hub through the real CLI. Only the Hub
itself is a stand-in (HfApi's two methods record their arguments): it cannot be reached from here."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from safetensors.torch import load_file

from thinktuning.cli import main
from thinktuning.run import card
from thinktuning.run.folder import write_marker

TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")


def _train(root, name: str, extra: list[str]):
    from tests.train.test_trainer import _tiny_cfg
    from thinktuning import ThinkTuningTrainer

    cfg = _tiny_cfg(str(root / "student"), root / name, ["quiet=true", *extra])
    cfg.max_steps = 1  # save_every=0: the end of the run writes the one checkpoint
    ThinkTuningTrainer(cfg).train()
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full-weights and a LoRA run of one step each, trained once for the module."""
    from tests.train.test_trainer import _tiny_student
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    root = tmp_path_factory.mktemp("share")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _tiny_student(root / "student", load_tokenizer(resolve("smollm2-135m-instruct")))
        return {"full": _train(root, "full", []), "lora": _train(root, "lora", ["lora.enabled=true", "lora.r=2"])}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def run(runs, tmp_path):
    """A private copy of the full run, so a test may add files to it."""
    return shutil.copytree(runs["full"], tmp_path / "run")


def _header(readme: str) -> dict:
    lines = readme.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end]))


def test_dry_run_writes_the_card_and_model_files_but_no_training_state(run, capsys):
    assert main(["push", str(run), "--repo-id", "me/tiny-thinktuning", "--dry-run"]) == 0
    out = run / "hub-upload"
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "training.png"} <= names
    assert not names & set(TRAINING_STATE)
    ckpt = run / "checkpoints" / "step-000001"
    saved, uploaded = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert saved.keys() == uploaded.keys() and all(torch.equal(saved[k], uploaded[k]) for k in saved)
    assert (out / "training.png").read_bytes().startswith(b"\x89PNG")

    readme = (out / "README.md").read_text()
    meta = _header(readme)
    assert meta["tags"] == ["thinktuning", "grpo", "reinforcement-learning"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # a local student folder: nothing on the Hub to link to
    assert "datasets" not in meta  # the built-in arithmetic task
    deviations = json.loads((run / "run.json").read_text())["deviations_from_paper"]
    assert deviations
    for d in deviations:
        assert f"- {d}" in readme
    assert "![reward and accuracy per step](training.png)" in readme
    assert "<details><summary>config.yaml</summary>" in readme and "group_size: 4" in readme
    assert "steps trained: 1 of 1; uploaded checkpoint: step 1" in readme
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    # a second dry run replaces the folder it wrote
    assert main(["push", str(run), "--repo-id", "me/other", "--dry-run"]) == 0
    assert _header((out / "README.md").read_text())["tags"][0] == "thinktuning"
    assert "# other" in (out / "README.md").read_text()


def test_lora_run_uploads_the_adapter_and_says_so(runs, tmp_path):
    out = tmp_path / "up"
    assert main(["push", str(runs["lora"]), "--repo-id", "me/tiny-lora", "--dry-run", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert "model.safetensors" not in names and not names & set(TRAINING_STATE)
    readme = (out / "README.md").read_text()
    meta = _header(readme)
    assert "lora" in meta["tags"] and meta["library_name"] == "peft"
    ckpt_readme = runs["lora"] / "checkpoints" / "step-000001" / "README.md"
    assert not ckpt_readme.exists() or "thinktuning" not in card.card_tags(ckpt_readme.read_text())
    assert "**LoRA adapter** (rank 2)" in readme and "a local model, not on the Hub" in readme
    assert any("lora.enabled" in line for line in readme.splitlines() if line.startswith("- "))


def test_eval_results_become_the_cards_table(run, tmp_path):
    results = {"model": {"spec": str(run), "run_dir": str(run), "step": 1}, "_note": "x",
               "settings": {"samples": 1, "greedy": True, "max_new_tokens": 64, "limit": 5},
               "benchmarks": {"gsm8k": {"metrics": {"accuracy": 0.4}, "items": []}}}
    (run / "eval_results.json").write_text(json.dumps(results))
    out = tmp_path / "up"
    assert main(["push", str(run), "--repo-id", "me/x", "--dry-run", "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert "## Evaluation" in readme and "| gsm8k accuracy | 0.400 |" in readme
    assert str(run) not in readme  # local paths are not published


def test_upload_creates_the_repo_and_uploads_the_folder(run, monkeypatch, capsys):
    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **kw: calls.append(("create_repo", a, kw))
                        or "https://huggingface.co/me/tiny")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **kw: calls.append(("upload_folder", a, kw)))
    assert main(["push", str(run), "--repo-id", "me/tiny", "--private", "--checkpoint", "step-1"]) == 0
    assert calls == [
        ("create_repo", ("me/tiny",), {"private": True, "exist_ok": True}),
        ("upload_folder", (), {"repo_id": "me/tiny", "folder_path": str(run / "hub-upload"), "repo_type": "model",
                               "commit_message": "Upload model trained with thinktuning"}),
    ]
    assert "pushed to https://huggingface.co/me/tiny (private)" in capsys.readouterr().out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_token_stops_before_anything_is_written(run, monkeypatch, tmp_path, capsys):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["push", str(run), "--repo-id", "me/tiny"]) == 2
    line = _one_error_line(capsys)
    assert "no Hugging Face token" in line and "huggingface-cli login" in line and "HF_TOKEN" in line
    assert not (run / "hub-upload").exists()


def test_failed_upload_is_one_line(run, monkeypatch, capsys):
    import httpx2  # huggingface_hub's HTTP client: the error carries the response it came with

    def refuse(self, *a, **kw):
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise huggingface_hub.errors.HfHubHTTPError("403 Forbidden: you cannot write to me/tiny\nmore detail",
                                                    response=response)

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert main(["push", str(run), "--repo-id", "me/tiny"]) == 2
    line = _one_error_line(capsys)
    assert "upload to me/tiny failed (HfHubHTTPError: 403 Forbidden" in line and "hf_test_token" not in line


@pytest.mark.parametrize(
    ("case", "argv", "expected"),
    [
        ("missing", [], "no such folder"),
        ("foreign", [], "is not a thinktuning run folder"),
        ("unfinished", [], "has no complete checkpoint"),
        ("run", ["--checkpoint", "step-7"], "has no complete checkpoint step 7; complete ones: step-000001"),
        ("run", ["--checkpoint", "last"], "--checkpoint expects step-N"),
        ("run", ["--repo-id", "no-org"], "is not a Hub model id"),
        ("run", ["--repo-id", "a/b/c"], "is not a Hub model id"),
        ("run", ["--out", "OUT_FOREIGN"], "already holds files that are not an upload folder"),
    ],
)
def test_user_errors_are_one_line(run, tmp_path, capsys, case, argv, expected):
    folder = {"missing": tmp_path / "nope", "foreign": tmp_path / "foreign", "unfinished": tmp_path / "unfinished",
              "run": run}[case]
    if case == "foreign":
        folder.mkdir()
        (folder / "config.yaml").write_text("seed: 1\n")
    if case == "unfinished":
        folder.mkdir()
        write_marker(folder)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    argv = [str(foreign) if a == "OUT_FOREIGN" else a for a in argv]
    repo = [] if "--repo-id" in argv else ["--repo-id", "me/tiny"]
    assert main(["push", str(folder), *repo, *argv, "--dry-run"]) == 2
    assert expected in _one_error_line(capsys)
    assert (foreign / "todo.txt").read_text() == "mine"


# ---- the card alone, from plain dicts ----

def test_base_model_and_datasets_name_hub_ids_only():
    assert card.base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.base_model_id("Qwen/Qwen2.5-0.5B-Instruct", "hub") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert card.base_model_id("models/mine", "folder") is None
    assert card.base_model_id("/abs/model") is None and card.base_model_id("./m.gguf") is None
    assert card.dataset_ids({"name": "gsm8k", "source": "../shared/data/gsm8k"}, {"source": "x"}) == ["openai/gsm8k"]
    assert card.dataset_ids({"name": "math"}, None) == ["HuggingFaceH4/MATH-500"]
    assert card.dataset_ids({"name": "prompts", "source": "org/set"}, {"source": "hub dataset org/set"}) == ["org/set"]
    assert card.dataset_ids({"name": "prompts", "source": "data/mine.jsonl"}, {"source": "data/mine.jsonl"}) == []
    assert card.dataset_ids({"name": "arithmetic"}, {}) == []


def test_card_of_an_embedded_student_baseline():
    config = {"model": {"student": "smollm2-135m-instruct"}, "data": {"name": "gsm8k"}, "guidance": {"enabled": False},
              "lora": {"enabled": False}, "rollout": {"prompts_per_step": 2, "group_size": 4}}
    inputs = card.CardInputs("org/base", config, "seed: 0\n", {"deviations_from_paper": [], "total_steps": 2},
                             [{"step": 1, "reward/mean": 0.25, "accuracy": 0.25, "guidance/guided": 0}], 1,
                             eval_markdown=card.summary_table({"gsm8k": {"accuracy": 0.41}}), plot_name=None)
    text = card.render_card(inputs)
    meta = _header(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["datasets"] == ["openai/gsm8k"]
    assert "plain GRPO baseline" in text and "Q4_1 GGUF" in text
    assert "| gsm8k | accuracy | 0.410 |" in text and "![" not in text
    assert "final step (1): reward 0.250, accuracy (student alone) 0.250" in text
    assert card.card_tags(text)[0] == "thinktuning" and card.card_tags("# no header") == []
