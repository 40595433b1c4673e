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
