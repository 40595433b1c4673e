"""``compare``: the Markdown table of eval results (a column per run, deltas to the first) and its errors."""

from __future__ import annotations

import json

import pytest

from thinktuning.errors import CompareError
from thinktuning.eval.compare import compare_table, load_results


def _results(spec: str, acc: float, tokens: float, reflect: float, **settings) -> dict:
    """A results object of the shape `thinktuning eval` writes (test_evaluate checks the real writer)."""
    metrics = {"n": 20, "accuracy": acc, "mean_response_tokens": tokens, "truncation_rate": 0.5}
    return {
        "format": 1, "model": {"spec": spec}, "backend": "transformers",
        "settings": {"samples": 1, "greedy": True, "max_new_tokens": 384, "limit": 20, "seed": 0,
                     "answer_fallback": "none", **settings},
        "benchmarks": {"gsm8k": {"version": "abc", "metrics": metrics, "reflection": {"any": reflect}, "items": []}},
        "macro_average": {"accuracy": acc, "mean_response_tokens": tokens, "truncation_rate": 0.5,
                          "reflection": {"any": reflect, "verification": reflect / 2}},
    }


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def _row(table: str, name: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_has_a_column_per_run_and_deltas_to_the_first(tmp_path):
    a = _write(tmp_path / "a.json", _results("base-model", 0.25, 120.0, 0.1))
    b = _write(tmp_path / "b.json", _results("tuned-model", 0.40, 95.5, 0.3))
    c = _write(tmp_path / "c.json", _results("other", 0.20, 130.0, 0.0))
    table = compare_table([a, b, c])
    header = _row(table, "metric")
    assert header == ["metric", "base-model", "tuned-model", "Δ tuned-model", "other", "Δ other"]
    assert _row(table, "gsm8k accuracy") == ["gsm8k accuracy", "0.250", "0.400", "+0.150", "0.200", "-0.050"]
    assert _row(table, "gsm8k n") == ["gsm8k n", "20", "20", "+0", "20", "+0"]
    assert _row(table, "gsm8k mean_response_tokens")[1:4] == ["120.0", "95.5", "-24.5"]
    assert _row(table, "**macro average** accuracy")[1:4] == ["0.250", "0.400", "+0.150"]
    assert _row(table, "reflection verification")[1:4] == ["0.050", "0.150", "+0.100"]
    assert "Caveats" not in table


def test_missing_benchmark_and_differing_settings_are_shown(tmp_path):
    first = _results("m1", 0.5, 10.0, 0.0)
    second = _results("m2", 0.5, 10.0, 0.0, max_new_tokens=1024)
    second["benchmarks"]["math500"] = {"version": "x", "metrics": {"accuracy": 0.1}, "reflection": {}}
    second["benchmarks"]["gsm8k"]["version"] = "def"
    table = compare_table([_write(tmp_path / "1.json", first), _write(tmp_path / "2.json", second)])
    assert _row(table, "math500 accuracy") == ["math500 accuracy", "–", "0.100", "–"]
    assert "settings differ: `max_new_tokens` = m1: 384, m2: 1024" in table
    assert "`gsm8k`: different data" in table


def test_same_model_twice_gets_distinct_column_titles(tmp_path):
    a = _write(tmp_path / "a.json", _results("m", 0.1, 1.0, 0.0))
    b = _write(tmp_path / "b.json", _results("m", 0.2, 1.0, 0.0))
    assert _row(compare_table([a, b]), "metric")[1:3] == ["m (a.json)", "m (b.json)"]


def test_run_folder_argument(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CompareError, match=r"no eval_results.json.*thinktuning eval --model"):
        load_results(run)
    _write(run / "eval_results.json", _results("m", 0.1, 1.0, 0.0))
    assert load_results(run)["_path"] == str(run / "eval_results.json")


@pytest.mark.parametrize(("content", "match"), [("not json", "not a readable JSON"), ('{"a": 1}', "no 'benchmarks'")])
def test_bad_files_are_refused(tmp_path, content, match):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(CompareError, match=match):
        load_results(tmp_path / "x.json")
    with pytest.raises(CompareError, match="no such file"):
        load_results(tmp_path / "missing.json")


def _with_items(spec: str, correct: list[bool]) -> dict:
    res = _results(spec, sum(correct) / len(correct), 50.0, 0.0)
    res["benchmarks"]["gsm8k"]["items"] = [
        {"id": f"q{i}", "samples": [{"correct": c}]} for i, c in enumerate(correct)]
    return res


def test_labelled_results_are_grouped_by_arm_with_intervals(tmp_path):
    base = _write(tmp_path / "z.json", _with_items("zero", [False] * 10))
    # three seeds of an arm that solves items 0-4 in every seed: +0.5; a replicate's difference is the share of drawn
    # items among 0-4, Binomial(10, 1/2) / 10, whose 2.5% and 97.5% points are 0.2 and 0.8 (P(X <= 1) = 0.011,
    # P(X <= 2) = 0.055) -> [+0.2, +0.8], excluding 0
    arm = [_write(tmp_path / f"a{s}.json", _with_items("arm", [True] * 5 + [False] * 5)) for s in range(3)]
    table = compare_table([f"zero-shot={base}", *[f"tt={p}" for p in arm]])
    header = _row(table, "metric")
    assert header == ["metric", "zero-shot (n=1)", "tt (n=3)", "Δ tt [95% CI]"]
    row = _row(table, "gsm8k accuracy")
    assert row[1] == "0.000" and row[2] == "0.500 ± 0.000"
    assert row[3] == "+0.500 [+0.200, +0.800]*"
    assert _row(table, "gsm8k mean_response_tokens")[2:] == ["50.0 ± 0.000", "+0.0"]


def test_seed_spread_gives_a_t_interval(tmp_path):
    # accuracies 0.1, 0.2, 0.3 over 10 items: mean 0.2, sd 0.1, t(2) 4.303 -> half-width 0.2484
    runs = [_write(tmp_path / f"s{k}.json", _with_items("m", [True] * k + [False] * (10 - k))) for k in (1, 2, 3)]
    table = compare_table([f"arm={p}" for p in runs])
    assert _row(table, "gsm8k accuracy")[1] == "0.200 ± 0.248"


def test_different_benchmark_sets_are_a_caveat(tmp_path):
    first = _results("m1", 0.5, 10.0, 0.0)
    second = _results("m2", 0.5, 10.0, 0.0)
    second["benchmarks"]["math500"] = {"version": "x", "metrics": {"accuracy": 0.1}, "reflection": {}}
    table = compare_table([_write(tmp_path / "1.json", first), _write(tmp_path / "2.json", second)])
    assert "benchmark sets differ" in table and "not comparable" in table
