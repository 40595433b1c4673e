"""Tests for the arithmetic task and the GSM8K / MATH loaders (local files only; the hub is faked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from thinktuning.data.arithmetic import make_arithmetic
from thinktuning.data.examples import INSTRUCTION, Example, build_prompt
from thinktuning.data.load import load_examples
from thinktuning.errors import DatasetError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "gsm8k" / "train.jsonl").is_file(), reason="no ../shared/data copy of the datasets"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- prompts ----------------------------------------------------------------------------------------------


def test_build_prompt():
    assert build_prompt("What is 2 + 2?") == f"What is 2 + 2?\n\n{INSTRUCTION}"
    boxed_already = "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert build_prompt(boxed_already) == boxed_already
    assert build_prompt("Q?", instruction="Answer briefly.") == "Q?\n\nAnswer briefly."


# --- arithmetic --------------------------------------------------------------------------------------------


def test_arithmetic_is_deterministic_per_seed():
    a, b = make_arithmetic(60, seed=3), make_arithmetic(60, seed=3)
    assert a == b
    assert [e.question for e in make_arithmetic(60, seed=4)] != [e.question for e in a]
    assert all(isinstance(e, Example) for e in a)
    assert len({e.id for e in a}) == 60
    assert len({e.question for e in a}) == 60  # no duplicates within a split


def numbers(question: str) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in re.findall(r"\d+", question)))


def test_arithmetic_train_and_test_never_overlap():
    # Different seeds on purpose: disjointness must not depend on the seed either.
    train = make_arithmetic(1500, seed=0, levels=(1, 2, 3, 4), split="train")
    test = make_arithmetic(300, seed=1, levels=(1, 2, 3, 4), split="test")
    assert not {e.question for e in train} & {e.question for e in test}
    # Stronger: not even the computation recurs in other words (levels 1-3 are one operation on the
    # numbers in the question, so numbers + answer identify the computation).
    train = make_arithmetic(1500, seed=0, split="train")
    test = make_arithmetic(300, seed=1, split="validation")
    signature = lambda exs: {(numbers(e.question), e.reference) for e in exs}  # noqa: E731
    assert not signature(train) & signature(test)


def test_arithmetic_levels_and_answers():
    examples = make_arithmetic(80, seed=0, levels=(1, 2, 3, 4))
    for i, ex in enumerate(examples):
        level = (1, 2, 3, 4)[i % 4]  # levels cycle, so each is equally represented
        answer = int(ex.reference)
        assert answer >= 0
        assert ex.prompt == build_prompt(ex.question)
        assert ex.solution is not None and ex.solution.endswith(f"= {answer}.")
        if level == 1:
            a, b = (int(x) for x in re.findall(r"\d+", ex.question))
            assert 1 <= a <= 9 and 1 <= b <= 9 and a + b == answer  # single digits
        elif level == 2 and ex.question.startswith("What is"):
            expr = ex.question.removeprefix("What is ").rstrip("?")
            assert re.fullmatch(r"[\d +-]+", expr) and eval(expr) == answer
        else:
            assert ex.question.endswith("?") and len(ex.question.split()) > 8  # a word problem
    only_three = make_arithmetic(20, seed=0, levels=(3,))
    assert all(len(e.question.split()) > 8 for e in only_three)


def test_arithmetic_through_load_examples():
    examples, stats = load_examples("arithmetic", split="test", limit=30, seed=2)
    assert len(examples) == 30 and stats.rows_used == 30 and stats.rows_skipped == 0
    assert examples[0].id.startswith("arithmetic/test/seed2/")
    assert examples == load_examples("arithmetic", split="test", limit=30, seed=2)[0]
    assert len(load_examples("arithmetic")[0]) == 2000  # default training size


@pytest.mark.parametrize("levels", [(), (0,), (5,), (1, 7)])
def test_arithmetic_bad_levels(levels):
    with pytest.raises(DatasetError, match="levels"):
        make_arithmetic(5, seed=0, levels=levels)


def test_arithmetic_takes_no_source():
    with pytest.raises(DatasetError, match=r"data\.source"):
        load_examples("arithmetic", source="foo.jsonl")


# --- GSM8K -------------------------------------------------------------------------------------------------


@needs_shared
def test_gsm8k_local_folder_matches_the_file():
    examples, stats = load_examples("gsm8k", source=str(SHARED / "gsm8k"), split="train", limit=50)
    assert len(examples) == 50 and stats.rows_read == 50 and stats.rows_skipped == 0
    first = examples[0]
    assert first.id == "gsm8k/train/0"
    assert first.question.startswith("Natalia sold clips to 48 of her friends")
    assert first.reference == "72"
    assert first.solution == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert examples[1].reference == "10"
    assert first.prompt == build_prompt(first.question)
    # Every reference agrees with an independent reading of the file.
    lines = (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()[:50]
    expected = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "") for line in lines]
    assert [e.reference for e in examples] == expected
    assert all("<<" not in (e.solution or "") for e in examples)


@needs_shared
def test_gsm8k_test_split_and_file_source():
    by_folder, _ = load_examples("gsm8k", source=str(SHARED / "gsm8k"), split="test")
    assert len(by_folder) == 1319
    by_file, _ = load_examples("gsm8k", source=str(SHARED / "gsm8k" / "test.jsonl"), limit=5)
    assert [e.reference for e in by_file] == [e.reference for e in by_folder[:5]]
    assert by_file[0].id == "gsm8k/test/0"


def test_gsm8k_comma_reference(tmp_path):
    row = {"question": "How many?", "answer": "Lots <<2*500=1000>>.\n#### 1,000"}
    path = write_jsonl(tmp_path / "g.jsonl", [row])
    (ex,), _ = load_examples("gsm8k", source=str(path))
    assert ex.reference == "1000" and ex.solution == "Lots ."


def bad_gsm8k(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"question": "Good one?", "answer": "2+2=4\n#### 4"},
            {"question": "No marker?", "answer": "just 5"},
            {"question": 17, "answer": "#### 3"},
            "{not json",
            {"question": "Empty?", "answer": "####  "},
            {"question": "Last good?", "answer": "#### 8"},
        ],
    )


def test_bad_row_error_names_file_line_and_fix(tmp_path):
    path = bad_gsm8k(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_examples("gsm8k", source=str(path))
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "data.on_bad_row=skip" in message


def test_bad_rows_skipped_and_counted(tmp_path):
    examples, stats = load_examples("gsm8k", source=str(bad_gsm8k(tmp_path)), on_bad_row="skip")
    assert [e.reference for e in examples] == ["4", "8"]
    assert [e.id for e in examples] == ["gsm8k/bad/0", "gsm8k/bad/5"]  # ids keep the row position
    assert stats.rows_read == 6 and stats.rows_used == 2 and stats.rows_skipped == 4
    assert stats.skipped_reasons == {
        "no #### in answer": 1,
        "question not a string": 1,
        "invalid JSON": 1,
        "empty answer after ####": 1,
    }
    limited, stats = load_examples("gsm8k", source=str(bad_gsm8k(tmp_path)), on_bad_row="skip", limit=1)
    assert len(limited) == 1 and stats.rows_read == 1


def test_missing_columns(tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "Q?", "label": "3"}])
    with pytest.raises(DatasetError, match=r"missing column.*Columns found: \['label', 'prompt'\].*needed"):
        load_examples("gsm8k", source=str(path))


def test_empty_and_all_bad(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        load_examples("gsm8k", source=str(empty))
    all_bad = write_jsonl(tmp_path / "allbad.jsonl", [{"question": "Q", "answer": "no marker"}])
    with pytest.raises(DatasetError, match="no usable rows"):
        load_examples("gsm8k", source=str(all_bad), on_bad_row="skip")


def test_nonexistent_path_and_missing_split(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*data\.source="):
        load_examples("gsm8k", source=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_examples("gsm8k", source="./no/such/folder")
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Q", "answer": "#### 1"}])
    with pytest.raises(DatasetError, match=r"no file for split 'train'.*test\.jsonl"):
        load_examples("gsm8k", source=str(tmp_path), split="train")


def test_argument_validation():
    with pytest.raises(DatasetError, match="arithmetic, gsm8k, math"):
        load_examples("gsm9k")
    with pytest.raises(DatasetError, match="on_bad_row"):
        load_examples("arithmetic", on_bad_row="ignore")
    with pytest.raises(DatasetError, match="limit"):
        load_examples("arithmetic", limit=0)


def test_hub_failure_explains_local_fallback(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError) as info:
        load_examples("gsm8k")
    message = str(info.value)
    assert "hub load of 'openai/gsm8k'" in message and "Couldn't reach" in message
    assert "more detail" not in message and "--set data.source=../shared/data/gsm8k" in message


def test_hub_success_path(monkeypatch):
    import datasets

    calls = []

    def fake(path, name=None, split=None):
        calls.append((path, name, split))
        rows = [{"problem": "Find $x$.", "solution": "So $x=\\boxed{\\frac{1}{2}}$."}]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    (ex,), stats = load_examples("math", split="test")
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]
    assert ex.reference == "\\frac{1}{2}" and ex.solution == "So $x=\\boxed{\\frac{1}{2}}$."
    assert ex.id == "math/test/0" and "MATH-500" in stats.source
    with pytest.raises(DatasetError, match="only a 'test' split"):
        load_examples("math")  # split defaults to "train"


# --- MATH and other answer-column files ---------------------------------------------------------------------


@needs_shared
def test_math500_local():
    examples, stats = load_examples("math", source=str(SHARED / "math500"), split="test")
    assert len(examples) == 500 and stats.rows_skipped == 0
    first = examples[0]
    assert first.reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.prompt == first.question  # the question already carries a \boxed instruction
    assert first.prompt.count("\\boxed") == 1
    assert examples[3].reference == "9"


def test_math_reference_sources(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"problem": "A?", "answer": "7", "solution": "\\boxed{8}"},  # answer column wins
            {"problem": "B?", "solution": "First \\boxed{1}, finally \\boxed{\\frac{2}{3}}."},
            {"problem": "C?", "answer": "", "solution": "no box"},
            {"problem": "D?", "answer": 204},  # AIME files store integers
        ],
    )
    examples, stats = load_examples("math", source=str(path), on_bad_row="skip")
    assert [e.reference for e in examples] == ["7", "\\frac{2}{3}", "204"]
    assert stats.skipped_reasons == {"no answer": 1}


def test_math_csv(tmp_path):
    path = tmp_path / "aime.csv"
    path.write_text('question,answer\n"What is 1+1?",2\n')
    (ex,), _ = load_examples("math", source=str(path))
    assert ex.reference == "2" and ex.prompt == build_prompt("What is 1+1?")


@pytest.mark.parametrize(
    ("name", "row", "message"),
    [
        ("gsm8k", {"question": "Q?", "answer": 42}, "column 'answer' holds a int, not text"),
        ("gsm8k", {"question": ["Q?"], "answer": "#### 1"}, "column 'question' holds a list, not text"),
        ("math", {"problem": {"text": "P"}, "answer": "1"}, "column 'problem' holds a dict, not text"),
        ("math", {"problem": "P?", "answer": {"x": 1}}, "no usable 'answer'"),
        ("math", {"problem": "P?", "answer": True}, "no usable 'answer'"),  # a bool is not an answer
        ("math", {"problem": "P?", "answer": [1, 2], "solution": 5}, "no usable 'answer'"),
    ],
)
def test_non_text_fields_name_the_row_and_column(tmp_path, name, row, message):
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DatasetError, match=r"rows\.jsonl: line 1: ") as info:
        load_examples(name, source=str(path))
    assert message in str(info.value)
    # numbers are fine where a number is an answer (AIME-style files store integers)
    assert load_examples("math", source=str(write_jsonl(tmp_path / "n.jsonl", [{"problem": "P?", "answer": 7}])))


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("g.jsonl", b'{"question": "Q?", "answer": "#### 1"}\n{"question": "Caf\xe9?", "answer": "#### 2"}\n', 2),
        ("g.csv", b'question,answer\n"Q?","#### 1"\n"Caf\xe9?","#### 2"\n', 3),
        ("g.json", b'[{"question": "Caf\xe9?", "answer": "#### 2"}]', 1),
    ],
)
@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
def test_bytes_that_are_not_utf8_are_one_error_naming_file_line_and_fix(tmp_path, name, content, line, on_bad_row):
    """A file in another encoding is wrong as a whole: an error even with skip (skipping would drop every row
    with an accent and keep the rest)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_examples("gsm8k", source=str(path), on_bad_row=on_bad_row)
    message = str(info.value)
    assert message.startswith(f"{path}: line {line} is not UTF-8 text (byte 0xe9 at column ")
    assert "Re-save the file as UTF-8" in message


@pytest.mark.parametrize("content", [b'{"question": "Q?", "answer": "#### 1"}\n', b"question,answer\n", b""])
def test_a_file_named_parquet_that_is_not_parquet(tmp_path, content):
    path = tmp_path / "train.parquet"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_examples("gsm8k", source=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable Parquet file (")
    assert "rename it to .jsonl or .csv" in message and message.count(str(path)) == 1


def test_a_real_parquet_file_still_loads(tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pyarrow.table({"question": ["Q?"], "answer": ["1+1\n#### 2"]}), path)
    (ex,), _ = load_examples("gsm8k", source=str(path))
    assert ex.reference == "2"


# ------------------------------------------------------------------ data.name=prompts (any prompt dataset)

def _prompts(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_prompts_in_trl_standard_and_conversational_formats(tmp_path):
    from thinktuning.data.load import PromptColumns

    std = _prompts(tmp_path, [{"prompt": "What is 2 + 3?", "answer": 5}, {"prompt": "Name 7.", "answer": "7"}])
    ex, stats = load_examples("prompts", std)
    assert [(e.question, e.prompt, e.reference) for e in ex] == [("What is 2 + 3?", "What is 2 + 3?", "5"),
                                                                  ("Name 7.", "Name 7.", "7")]
    assert stats.rows_used == 2 and ex[0].id == "prompts/p/0"
    chat = _prompts(tmp_path, [{"prompt": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is 2 + 3?"}], "answer": "#### 5"}],
                    "c.jsonl")
    (e,), _ = load_examples("prompts", chat, columns=PromptColumns(instruction="Box the answer."))
    assert e.question == "Be brief.\n\nWhat is 2 + 3?" and e.reference == "5"
    assert e.prompt == "Be brief.\n\nWhat is 2 + 3?\n\nBox the answer."


def test_prompts_column_mapping_in_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thinktuning.data.load import PromptColumns

    cols = PromptColumns(question="q", answer="gold", solution="work")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("q,gold,work\nWhat is 6 x 7?,,6 x 7 = \\boxed{42}\nWhat is 1 + 1?,2,1 + 1 = 2\n",
                        encoding="utf-8")
    ex, _ = load_examples("prompts", str(csv_path), columns=cols)
    assert [(e.reference, e.solution) for e in ex] == [("42", "6 x 7 = \\boxed{42}"), ("2", "1 + 1 = 2")]
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"q": ["What is 9 - 4?"], "gold": ["\\boxed{5}"], "work": ["9 - 4 = 5"]}), pq_path)
    (e,), _ = load_examples("prompts", str(pq_path), columns=cols)
    assert (e.question, e.reference) == ("What is 9 - 4?", "5")


def test_prompts_missing_columns_name_the_columns_that_exist(tmp_path):
    from thinktuning.data.load import PromptColumns

    path = _prompts(tmp_path, [{"problem": "What is 3 + 3?", "solution": "3 + 3 = \\boxed{6}"}])
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['prompt', 'answer'\]\. Columns found: "
                                           r"\['problem', 'solution'\]\. Name yours with data.question_column"):
        load_examples("prompts", path)
    # mapped: no answer column, so the solution's boxed answer is the reference
    (e,), _ = load_examples("prompts", path, columns=PromptColumns(question="problem", solution="solution"))
    assert (e.question, e.reference, e.solution) == ("What is 3 + 3?", "6", "3 + 3 = \\boxed{6}")
    with pytest.raises(DatasetError, match=r"needs data\.source"):
        load_examples("prompts", None)


def test_prompts_refuse_multi_turn_rows_with_the_row(tmp_path):
    path = _prompts(tmp_path, [{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                "answer": "1"}])
    with pytest.raises(DatasetError, match=r"line 1: column 'prompt' holds turns \['user', 'assistant'\]"):
        load_examples("prompts", path)
