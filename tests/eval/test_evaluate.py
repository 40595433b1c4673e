"""Evaluation: scoring of hand-written responses with the real checker, a real eval of a tiny model through the
transformers backend, run/checkpoint folder resolution, and the ``eval`` / ``compare`` CLI end to end."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.test_trainer import _tiny_student
from thinktuning.cli import main
from thinktuning.data.examples import Example
from thinktuning.errors import ModelNotFoundError
from thinktuning.eval.benchmarks import Benchmark
from thinktuning.eval.evaluate import EvalRequest, resolve_eval_model, run_eval, score_benchmark
from thinktuning.eval.generators import Generation, TransformersGenerator
from thinktuning.eval.settings import EvalSettings
from thinktuning.rewards.answers import extract_answer
from thinktuning.rewards.checker import AnswerChecker


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker() as c:
        yield c


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


def _bench(kind: str, refs: list[str]) -> Benchmark:
    examples = [Example(id=f"b/{i}", question=f"q{i}", prompt=f"q{i}", reference=r) for i, r in enumerate(refs)]
    return Benchmark("b", examples, kind, "test", "v")


def test_score_math_benchmark_hand_checked(checker):
    gens = [
        [Generation("so \\boxed{\\frac{1}{2}}", 10, True), Generation("\\boxed{0.5} and more", 30, False)],
        [Generation("\\boxed{3}", 4, True), Generation("I get \\boxed{4}.", 8, True)],
    ]
    out = score_benchmark(_bench("math", ["0.5", "4"]), gens, EvalSettings(samples=2), checker)
    samples = [s for item in out["items"] for s in item["samples"]]
    # math-verify equivalence; the truncated response is wrong though its box is right (as the training reward)
    assert [s["correct"] for s in samples] == [True, False, False, True]
    assert [s["extracted"] for s in samples] == ["\\frac{1}{2}", "0.5", "3", "4"]
    m = out["metrics"]
    assert m["n"] == 2 and m["accuracy"] == 0.5 and m["avg@2"] == 0.5
    assert m["pass@1"] == 0.5 and m["pass@2"] == 1.0
    assert m["maj@2"] == 0.5  # each item ties 1-1: the first answer wins -> right, then wrong
    assert m["mean_response_tokens"] == (10 + 30 + 4 + 8) / 4
    assert m["truncation_rate"] == 0.25 and m["no_answer_rate"] == 0.0
    assert set(out["reflection"]) >= {"verification", "backtracking", "any"}


def test_answer_fallback_is_opt_in(checker):
    gens = [[Generation("Three plus one is 4.", 5, True)]]
    strict = score_benchmark(_bench("math", ["4"]), gens, EvalSettings(), checker)
    loose = score_benchmark(_bench("math", ["4"]), gens, EvalSettings(answer_fallback="last_number"), checker)
    assert strict["metrics"]["accuracy"] == 0.0 and strict["metrics"]["no_answer_rate"] == 1.0
    assert loose["metrics"]["accuracy"] == 1.0 and loose["items"][0]["samples"][0]["extracted"] == "4"


def test_score_choice_benchmark_by_letter(checker):
    gens = [[Generation("The answer is (B).", 5, True)], [Generation("\\boxed{C}", 3, True)],
            [Generation("\\boxed{A}", 3, False)]]
    out = score_benchmark(_bench("choice", ["B", "D", "A"]), gens, EvalSettings(), checker)
    assert [i["samples"][0]["correct"] for i in out["items"]] == [True, False, False]
    assert out["metrics"]["accuracy"] == pytest.approx(1 / 3)


def _arith_request(model: str, out, samples: int, **kw) -> EvalRequest:
    settings = EvalSettings(samples=samples, temperature=1.0, top_p=1.0, max_new_tokens=12, limit=3, seed=5,
                            batch_size=4, **kw)
    return EvalRequest(model=model, benchmarks=["arithmetic", "gsm8k"], settings=settings,
                       data_dir=str(out.parent / "data"), output=str(out))


def _write_gsm8k(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"Tom has {a} apples and buys {b}. How many now?", "answer": f"{a}+{b}\n#### {a + b}"}
            for a, b in ((2, 3), (10, 5), (7, 7))]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_eval_of_tiny_model(tmp_path, tiny_student, checker):
    _write_gsm8k(tmp_path / "data" / "gsm8k")
    out = tmp_path / "res.json"
    results = run_eval(_arith_request(tiny_student, out, samples=3))
    assert json.loads(out.read_text()) == results and results["complete"] is True
    assert results["model"]["path"] == tiny_student and results["backend"] == "transformers"
    s = results["settings"]
    assert s["samples"] == 3 and not s["greedy"] and s["accuracy_is"] == "avg@3" and s["seed"] == 5
    assert {"torch", "transformers", "math-verify", "datasets"} <= set(results["versions"])
    assert results["wall_time_s"] > 0
    accs = []
    for name in ("arithmetic", "gsm8k"):
        b = results["benchmarks"][name]
        assert len(b["items"]) == 3 and all(len(i["samples"]) == 3 for i in b["items"])
        samples = [smp for i in b["items"] for smp in i["samples"]]
        assert all(0 <= smp["tokens"] <= 12 for smp in samples)
        assert all(smp["tokens"] == 12 for smp in samples if smp["truncated"])
        assert any(not smp["truncated"] for smp in samples)  # end-of-turn has p ~ 0.1 per token
        # each verdict is the checker's on the recorded response: the file can be hand-checked
        for item in b["items"]:
            for smp in item["samples"]:
                answer = extract_answer(smp["response"])
                assert smp["extracted"] == answer
                assert smp["correct"] == (not smp["truncated"] and answer is not None
                                          and checker.check(answer, item["reference"]))
        m = b["metrics"]
        assert m["accuracy"] == pytest.approx(sum(smp["correct"] for smp in samples) / 9)
        assert m["truncation_rate"] == pytest.approx(sum(smp["truncated"] for smp in samples) / 9)
        assert {"pass@1", "pass@2", "pass@3", "maj@3", "avg@3"} <= set(m)
        accs.append(m["accuracy"])
    assert results["benchmarks"]["gsm8k"]["source"].endswith("gsm8k/test.jsonl")
    assert results["macro_average"]["accuracy"] == pytest.approx(sum(accs) / 2)
    # same seed, same responses
    again = run_eval(_arith_request(tiny_student, tmp_path / "again.json", samples=3))
    responses = [[s["response"] for i in b["items"] for s in i["samples"]] for b in results["benchmarks"].values()]
    assert [[s["response"] for i in b["items"] for s in i["samples"]] for b in again["benchmarks"].values()] == \
        responses


def test_greedy_generation_matches_token_by_token_argmax(tiny_student):
    """samples=1 is greedy: the backend's text is the argmax continuation computed by plain forward passes."""
    import torch

    from thinktuning.models.load import load_model, load_tokenizer
    from thinktuning.models.resolve import resolve

    resolved = resolve(tiny_student)
    tok, model = load_tokenizer(resolved), load_model(resolved)
    gen = TransformersGenerator(model, tok, batch_size=2)
    prompts = ["What is 2 + 3?", "Add 4 and 4, please, and explain."]
    outs = gen.generate(prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=5, greedy=True)
    for prompt, (g,) in zip(prompts, outs, strict=True):
        ids = gen.encode([prompt])[0]
        new = []
        with torch.no_grad():
            for _ in range(5):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == gen.eos_id:
                    break
                new.append(nxt)
        assert g.text == tok.decode(new, skip_special_tokens=True) and g.num_tokens == len(new)


def _fake_run(root, student) -> None:
    for step in (1, 2):
        ckpt = root / "checkpoints" / f"step-{step:06d}"
        shutil.copytree(student, ckpt)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    (root / "config.yaml").write_text("seed: 0\n")


def test_run_folder_resolves_to_its_last_checkpoint(tmp_path, tiny_student):
    _fake_run(tmp_path / "run", tiny_student)
    resolved, info = resolve_eval_model(str(tmp_path / "run"))
    assert resolved.path == str(tmp_path / "run" / "checkpoints" / "step-000002")
    assert info["run_dir"] == str(tmp_path / "run") and info["step"] == 2
    resolved, info = resolve_eval_model(str(tmp_path / "run" / "checkpoints" / "step-000001"))
    assert info["step"] == 1 and "run_dir" not in info
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ModelNotFoundError, match="no complete checkpoint"):
        resolve_eval_model(str(tmp_path / "empty"))


def test_cli_eval_and_compare_end_to_end(tmp_path, tiny_student, capsys):
    run = tmp_path / "run"
    _fake_run(run, tiny_student)
    base = ["eval", "--benchmarks", "arithmetic", "--limit", "2", "--max-new-tokens", "6", "--batch-size", "2"]
    assert main([*base, "--model", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    results = json.loads((run / "eval_results.json").read_text())
    assert results["model"]["step"] == 2 and results["settings"]["greedy"] and results["settings"]["levels"] == [1, 2]
    summary = json.loads((run / "eval.json").read_text())  # the table `thinktuning report` shows
    assert summary["arithmetic"]["accuracy"] == results["benchmarks"]["arithmetic"]["metrics"]["accuracy"]
    other = tmp_path / "base.json"
    assert main([*base, "--model", tiny_student, "--samples", "2", "--output", str(other)]) == 0
    md = tmp_path / "cmp.md"
    assert main(["compare", str(run), str(other), "--output", str(md)]) == 0
    table = md.read_text()
    assert "| arithmetic accuracy |" in table and "Δ" in table and "settings differ: `samples`" in table
    capsys.readouterr()
    (tmp_path / "fresh").mkdir()
    assert main(["compare", str(tmp_path / "fresh")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no eval_results.json" in err and "thinktuning eval --model" in err


@pytest.fixture
def offline(monkeypatch):
    """The hub's own offline switch, so a hub fallback fails at once instead of retrying for ~25 s."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--benchmarks", "gsm8k,mmlu"], "unknown benchmark"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--levels", "1,x"], "--levels expects numbers"),
        (["--levels", "7"], "--levels must be arithmetic levels among 1,2,3,4"),
        (["--benchmarks", "aime25", "--data-dir", "/nonexistent-dir"], "/nonexistent-dir/aime25/test.jsonl"),
    ],
)
def test_cli_user_errors_are_one_line(argv, expected, offline, capsys):
    """Each fails before any model is loaded (benchmarks load first), with one line and exit code 2."""
    assert main(["eval", "--model", "smollm2-135m-instruct", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_partial_results_after_each_benchmark_but_the_last(tiny_student):
    from thinktuning.eval.benchmarks import load_benchmark
    from thinktuning.eval.evaluate import evaluate
    from thinktuning.models.load import load_model, load_tokenizer
    from thinktuning.models.resolve import resolve

    resolved = resolve(tiny_student)
    gen = TransformersGenerator(load_model(resolved), load_tokenizer(resolved))
    benches = [load_benchmark("arithmetic", limit=1, levels=(lv,)) for lv in (1, 2)]
    benches[1] = Benchmark("arithmetic-2", benches[1].examples, "math", benches[1].source, benches[1].version)
    partial: list[dict] = []
    final = evaluate(gen, benches, EvalSettings(max_new_tokens=2), {"spec": "tiny"}, on_partial=partial.append)
    (only,) = partial
    assert only["complete"] is False and list(only["benchmarks"]) == ["arithmetic"]
    assert final["complete"] is True and list(final["benchmarks"]) == ["arithmetic", "arithmetic-2"]
    assert final["benchmarks"]["arithmetic"]["items"] == only["benchmarks"]["arithmetic"]["items"]


def test_prompts_are_encoded_exactly_as_the_trainer_encodes_them(smol_tokenizer):
    """Evaluation must see the training prompt token for token (chat template, assistant header)."""
    from thinktuning.eval.benchmarks import load_benchmark
    from thinktuning.models.load import encode_user_turns
    from thinktuning.train import trainer

    texts = [ex.prompt for ex in load_benchmark("arithmetic", limit=4).examples]
    gen = TransformersGenerator(make_tiny_model_for(smol_tokenizer), smol_tokenizer)
    assert trainer.encode_user_turns is encode_user_turns  # the trainer encodes its prompts with this function
    assert gen.encode(texts) == encode_user_turns(smol_tokenizer, texts)
    # and both equal rendering the chat template prompt by prompt (what the shared sentinel shortcut must match)
    rendered = [smol_tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True) for t in texts]
    assert gen.encode(texts) == smol_tokenizer(rendered, add_special_tokens=False)["input_ids"]


def make_tiny_model_for(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))


def test_an_output_that_cannot_be_written_fails_before_anything_is_generated(tmp_path, capsys):
    """--output is checked first: a long evaluation must never end in a traceback with its results lost."""
    from tests.servers import MisbehavingServer

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [(tmp_path, f"--output {tmp_path} is a folder; give a file path, e.g. --output "
                        f"{tmp_path / 'eval_results.json'}"),
             (blocker / "res.json", f"--output {blocker / 'res.json'} cannot be created: {blocker} is a file, not a "
                                    "folder. Choose another --output")]
    with MisbehavingServer(lambda i, body: (200, {}, b"{}", 0.0)) as server:
        for output, message in cases:
            code = main(["eval", "--model", "m", "--backend", "openai", "--base-url", server.base_url,
                         "--benchmarks", "arithmetic", "--limit", "2", "--output", str(output)])
            assert code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert server.requests == []  # nothing was generated


def test_a_run_folders_default_output_is_checked_before_the_model_loads(tmp_path, tiny_student, capsys, monkeypatch):
    from thinktuning.eval import evaluate

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setitem(evaluate.BACKENDS, "transformers", no_loading)
    run = tmp_path / "run"
    _fake_run(run, tiny_student)
    (run / "eval.json").mkdir()  # the summary for `thinktuning report` cannot be written
    assert main(["eval", "--model", str(run), "--benchmarks", "arithmetic", "--limit", "1"]) == 2
    assert capsys.readouterr().err == (f"error: the default output {run / 'eval.json'} (no --output given) is a "
                                       "folder; remove that folder, or give --output FILE\n")
