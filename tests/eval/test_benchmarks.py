"""Benchmark loading: the real local copies in ../shared/data, a GPQA CSV written here, and missing data."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from thinktuning.data.arithmetic import make_arithmetic
from thinktuning.errors import DatasetError
from thinktuning.eval.benchmarks import BENCHMARKS, GPQA_COLUMNS, extract_choice, load_benchmark, parse_benchmarks

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(),
                                reason=f"benchmark copies not found at {DATA}")


@pytest.fixture
def offline(monkeypatch):
    """The hub's own offline switch, so a hub fallback fails at once instead of retrying for ~25 s."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@needs_data
def test_gsm8k_from_local_copy():
    bench = load_benchmark("gsm8k", DATA, limit=5)
    assert bench.kind == "math" and bench.source == str(DATA / "gsm8k" / "test.jsonl")
    assert [ex.id for ex in bench.examples] == [f"gsm8k/{i}" for i in range(5)]
    first = bench.examples[0]
    assert first.question.startswith("Janet") and first.reference == "18"
    assert first.prompt.endswith("inside \\boxed{} notation.")
    assert re.fullmatch(r"[0-9a-f]{16}", bench.version)
    assert load_benchmark("gsm8k", DATA, limit=5).version == bench.version
    assert load_benchmark("gsm8k", DATA, limit=6).version != bench.version


@needs_data
@pytest.mark.parametrize(("name", "rows"), [("math500", 500), ("aime24", 30), ("aime25", 30), ("amc23", 40)])
def test_math_benchmarks_from_local_copies(name, rows):
    bench = load_benchmark(name, DATA)
    assert len(bench.examples) == rows
    for ex in bench.examples:
        assert ex.reference.strip()
        # these files already carry a \boxed{} instruction: the prompt must not add a second one
        assert ex.prompt.count("\\boxed") == 1, ex.prompt
    if name in ("aime24", "aime25"):
        assert all(ex.reference.isdigit() for ex in bench.examples)


def test_arithmetic_is_the_held_out_test_split():
    bench = load_benchmark("arithmetic", limit=10, seed=3, levels=(1, 2))
    assert "split=test" in bench.source and "levels=[1, 2]" in bench.source
    expected = make_arithmetic(10, 3, (1, 2), split="test")
    assert [ex.question for ex in bench.examples] == [ex.question for ex in expected]
    train = {ex.question for ex in make_arithmetic(2000, 3, (1, 2), split="train")}
    assert not train & {ex.question for ex in bench.examples}
    assert len(load_benchmark("arithmetic").examples) == 200  # the test split's default size


def _write_gpqa(path: Path, n: int, drop: str | None = None) -> list[dict]:
    rows = [{"Question": f"Which value is number {i}?", "Correct Answer": f"right {i}",
             "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
             "Incorrect Answer 3": f"wrong c{i}", "Record ID": f"rec{i}"} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [c for c in (*GPQA_COLUMNS, "Record ID") if c != drop]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_gpqa_from_local_csv_letters_point_at_the_correct_answer(tmp_path):
    rows = _write_gpqa(tmp_path / "gpqa-diamond" / "test.csv", 12)
    bench = load_benchmark("gpqa-diamond", tmp_path, seed=0)
    assert bench.kind == "choice" and bench.source.endswith("test.csv") and len(bench.examples) == 12
    for ex, row in zip(bench.examples, rows, strict=True):
        choices = dict(re.findall(r"^([A-D])\) (.*)$", ex.question, re.MULTILINE))
        assert sorted(choices.values()) == sorted(row[c] for c in GPQA_COLUMNS[1:])
        assert choices[ex.reference] == row["Correct Answer"]
        assert "letter of the correct choice" in ex.prompt
    # shuffled: the correct answer is not always A; fixed: same seed, same letters, whatever the limit
    assert len({ex.reference for ex in bench.examples}) > 1
    again = load_benchmark("gpqa-diamond", tmp_path, limit=5, seed=0)
    assert [ex.question for ex in again.examples] == [ex.question for ex in bench.examples[:5]]
    other = load_benchmark("gpqa-diamond", tmp_path, seed=1)
    assert [ex.question for ex in other.examples] != [ex.question for ex in bench.examples]


def test_gpqa_csv_missing_column_is_named(tmp_path):
    _write_gpqa(tmp_path / "gpqa-diamond" / "test.csv", 2, drop="Incorrect Answer 2")
    with pytest.raises(DatasetError, match="Incorrect Answer 2"):
        load_benchmark("gpqa-diamond", tmp_path)


def test_missing_benchmark_says_where_it_looked(tmp_path, offline):
    with pytest.raises(DatasetError) as err:
        load_benchmark("aime25", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "aime25" / "test.jsonl") in msg and "math-ai/aime25" in msg and "--data-dir" in msg
    with pytest.raises(DatasetError) as err:
        load_benchmark("gpqa-diamond", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "gpqa-diamond" / "test.csv") in msg and "Idavidrein/gpqa" in msg and "HF_TOKEN" in msg


def test_unknown_benchmark_names_list_the_valid_ones():
    assert parse_benchmarks("gsm8k, math500,gsm8k") == ["gsm8k", "math500"]
    with pytest.raises(DatasetError, match="valid names: " + ", ".join(BENCHMARKS)):
        parse_benchmarks("gsm8k,mmlu")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("so the answer is \\boxed{C}", "C"),
        ("\\boxed{(B)}", "B"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{A) 42 meters}", "A"),
        ("The answer is (A).", "A"),
        ("Answer: **B**", "B"),
        ("First I thought the answer is (A). Wait, the answer is (D).", "D"),
        ("\\boxed{42}", None),  # a value, not a letter: not guessed into one
        ("I think A is wrong", None),
        ("", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter
