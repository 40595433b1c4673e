"""Loading problems by dataset name: the built-in task, GSM8K and MATH from the hub or local JSONL/CSV/Parquet.

Every data mistake a user can make becomes a :class:`~thinktuning.errors.DatasetError` that names the file, the
row and the fix, instead of a KeyError deep inside a training step.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktuning.config.schema import DataConfig
from thinktuning.data.arithmetic import _ARITHMETIC_DEFAULT_SIZE, _check_levels, make_arithmetic
from thinktuning.data.examples import DataStats, Example, build_prompt
from thinktuning.errors import DatasetError
from thinktuning.jsonl import iter_jsonl, read_utf8
from thinktuning.rewards.answers import extract_boxed

DATASETS = ("arithmetic", "gsm8k", "math", "prompts")
DEFAULT_SOURCES = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500"}
_HUB_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class PromptColumns:
    """Where a ``prompts`` dataset keeps each field (``data.question_column`` etc.), and the optional instruction
    appended to every prompt."""

    question: str = "prompt"
    answer: str = "answer"
    solution: str | None = None
    instruction: str | None = None

class _BadRow(Exception):
    """Raised by a row converter; ``reason`` is the short key counted in DataStats.skipped_reasons."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True)
class _Table:
    label: str  # what messages call the data: a file path or "hub dataset X"
    id_part: str  # middle part of example ids: the split, or the file's stem
    columns: list[str]
    rows: list[tuple[str, Any]]  # ("line 7", record) ; a record that failed to parse is a _BadRow


def _looks_like_path(source: str) -> bool:
    return (Path(source).expanduser().exists() or source.startswith(("/", "./", "../", "~"))
            or source.lower().endswith(_LOCAL_SUFFIXES))


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    return [(f"line {n}", _BadRow("invalid JSON", f"invalid JSON ({rec.msg})") if isinstance(rec, json.JSONDecodeError)
             else rec) for n, rec in iter_jsonl(path)]


def _read_local_file(path: Path) -> tuple[list[str] | None, list[tuple[str, Any]]]:
    """Rows of one file with the place each came from (line for JSON lines, row otherwise)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return None, _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(read_utf8(path))
        except json.JSONDecodeError:
            return None, _read_jsonl(path)  # many ".json" files are really JSON lines
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            got = type(data).__name__
            raise DatasetError(f"{path}: expected a JSON list of objects (or JSON lines), got a {got}")
        return None, [(f"row {i}", rec) for i, rec in enumerate(data, start=1)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
        rows = [(f"row {i}", dict(rec)) for i, rec in enumerate(reader, start=1)]
        return list(reader.fieldnames or []), rows
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_LOCAL_SUFFIXES)}")


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[str, Any]]]:
    """A Parquet file's rows; a file that is not Parquet (JSON lines or CSV named .parquet, a cut download) is a
    DatasetError that says so, not pyarrow's ArrowInvalid traceback."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split("': ", 1)[-1]  # path said once
        raise DatasetError(f"{path}: not a readable Parquet file ({reason}). If it holds JSON lines or CSV, rename it "
                           "to .jsonl or .csv; otherwise export it again as Parquet") from None
    return table.column_names, [(f"row {i}", rec) for i, rec in enumerate(table.to_pylist(), start=1)]


def _read_local(source: str, split: str) -> _Table:
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"data source {source!r} does not exist. Pass an existing .jsonl/.json/.csv/"
                           f".parquet file or a folder holding {split}.jsonl, e.g. "
                           "--set data.source=../shared/data/gsm8k")
    if path.is_dir():
        candidates = [path / f"{split}{suffix}" for suffix in _LOCAL_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            present = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _LOCAL_SUFFIXES)
            raise DatasetError(f"folder {str(path)!r} has no file for split {split!r} (looked for "
                               f"{split}.jsonl etc.; found: {', '.join(present) or 'no data files'}). Set "
                               "data.split to one of those, or pass the file itself as data.source")
        path, id_part = found, split
    else:
        id_part = path.stem
    columns, rows = _read_local_file(path)
    if columns is None:
        first = next((rec for _, rec in rows if isinstance(rec, dict)), None)
        columns = list(first) if first is not None else []
    return _Table(str(path), id_part, columns, rows)


def _read_hub(name: str, source: str, split: str, config: str | None = None) -> _Table:
    """The real hub path (datasets.load_dataset); offline, its failure says how to use a local copy."""
    import datasets

    config = config or _HUB_CONFIGS.get(source)
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        hint = f"../shared/data/{'math500' if name == 'math' else name}" if name != "prompts" else "my_prompts.jsonl"
        raise DatasetError(
            f"hub load of {source!r} (config {config}, split {split!r}) failed: {type(exc).__name__}: "
            f"{first_line}. If you are offline, pass a local file or folder as the source instead, e.g. "
            f"--set data.source={hint}"
        ) from exc
    return _Table(f"hub dataset {source}", split, list(ds.column_names),
                  [(f"row {i}", rec) for i, rec in enumerate(ds, start=1)])


# --------------------------------------------------------------------------------------------------------
# Row converters: record -> (question, reference, solution), or _BadRow
# --------------------------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _text_field(record: dict, column: str) -> str:
    if column not in record or record[column] is None:
        raise _BadRow(f"missing {column}", f"column {column!r} is missing or null")
    value = record[column]
    if not isinstance(value, str):
        raise _BadRow(f"{column} not a string", f"column {column!r} holds a {type(value).__name__}, not text")
    if not value.strip():
        raise _BadRow(f"empty {column}", f"column {column!r} is empty")
    return value.strip()


def _answer_field(value: Any) -> str | None:
    """A reference answer cell as text; numbers are accepted (AIME files store integers)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    return text or None


def _gsm8k_row(record: dict) -> tuple[str, str, str | None]:
    question = _text_field(record, "question")
    answer = _text_field(record, "answer")
    if "####" not in answer:
        raise _BadRow("no #### in answer", "the answer has no '#### <number>' final line")
    worked, _, final = answer.rpartition("####")
    reference = final.strip().replace(",", "").replace("$", "").strip()
    if not reference:
        raise _BadRow("empty answer after ####", "nothing follows '####' in the answer")
    solution = _CALCULATOR.sub("", worked).strip() or None
    return question, reference, solution


def _math_row(record: dict) -> tuple[str, str, str | None]:
    question = _text_field(record, "problem" if "problem" in record else "question")
    solution = record.get("solution") if isinstance(record.get("solution"), str) else None
    reference = _answer_field(record.get("answer"))
    if reference is None and solution is not None:
        reference = extract_boxed(solution)
    if reference is None:
        raise _BadRow("no answer", "no usable 'answer' and no \\boxed{} answer in 'solution'")
    return question, reference, (solution.strip() or None) if solution else None


def _prompt_text(value: Any, column: str) -> str:
    """A prompt cell as one text: plain text, or chat messages (TRL's conversational format) of system and user
    turns joined by blank lines; an assistant turn means a multi-turn conversation, which is not a prompt here."""
    if isinstance(value, str):
        if not value.strip():
            raise _BadRow(f"empty {column}", f"column {column!r} is empty")
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        roles = [m.get("role") for m in value]
        if any(r not in ("system", "user") for r in roles):
            raise _BadRow("not a single-turn prompt", f"column {column!r} holds turns {roles}; only system and "
                          "user turns can form a prompt")
        parts = [str(m.get("content") or "").strip() for m in value]
        if not any(parts):
            raise _BadRow(f"empty {column}", f"column {column!r} holds messages without content")
        return "\n\n".join(p for p in parts if p)
    raise _BadRow(f"{column} not a prompt", f"column {column!r} holds a {type(value).__name__}, neither text nor a "
                  "list of chat messages")


def _reference(value: Any) -> str | None:
    """A reference answer cell: ``... #### 42`` (GSM8K style) and ``\\boxed{42}`` reduce to ``42``."""
    text = _answer_field(value)
    if text is None:
        return None
    if "####" in text:
        text = text.rpartition("####")[2].replace(",", "").replace("$", "").strip() or None
    elif "\\boxed" in text or "\\fbox" in text:
        text = extract_boxed(text)
    return text


def _prompts_row(record: dict, cols: PromptColumns) -> tuple[str, str, str | None]:
    if record.get(cols.question) is None:
        raise _BadRow(f"missing {cols.question}", f"column {cols.question!r} is missing or null")
    question = _prompt_text(record[cols.question], cols.question)
    solution = record.get(cols.solution) if cols.solution and isinstance(record.get(cols.solution), str) else None
    reference = _reference(record.get(cols.answer))
    if reference is None and solution:
        reference = extract_boxed(solution)
    if reference is None:
        raise _BadRow("no answer", f"no usable reference in column {cols.answer!r}"
                      + (f" and no \\boxed{{}} answer in {cols.solution!r}" if cols.solution else ""))
    return question, reference, (solution.strip() or None) if solution else None


def _check_columns(name: str, table: _Table, cols: PromptColumns | None = None) -> None:
    found = set(table.columns)
    if name == "prompts":
        cols = cols or PromptColumns()
        missing = [c for c in (cols.question,) if c not in found]
        if cols.answer not in found and not (cols.solution and cols.solution in found):
            missing.append(cols.answer)
        if cols.solution and cols.solution not in found:
            missing.append(cols.solution)
        if missing:
            raise DatasetError(
                f"{table.label}: missing column(s) {missing}. Columns found: {sorted(found) or 'none'}. Name yours "
                "with data.question_column, data.answer_column and data.solution_column")
        return
    cols_found = found
    if name == "gsm8k":
        missing = [c for c in ("question", "answer") if c not in cols_found]
        needed = "'question' and 'answer' (a worked solution ending '#### <number>')"
    else:
        missing = [] if cols_found & {"problem", "question"} else ["problem"]
        if not cols_found & {"answer", "solution"}:
            missing.append("answer")
        needed = "'problem' (or 'question') and 'answer' (or a 'solution' with a \\boxed{} answer)"
    if missing:
        raise DatasetError(f"{table.label}: missing column(s) {missing} for dataset {name!r}. Columns found: "
                           f"{sorted(cols_found) or 'none'}; columns needed: {needed}")


def _convert(name: str, table: _Table, limit: int | None, on_bad_row: str,
             cols: PromptColumns | None = None) -> tuple[list[Example], DataStats]:
    stats = DataStats(source=table.label)
    cols = cols or PromptColumns()
    convert = {"gsm8k": _gsm8k_row, "math": _math_row, "prompts": lambda r: _prompts_row(r, cols)}[name]
    examples: list[Example] = []
    for index, (where, record) in enumerate(table.rows):
        if limit is not None and len(examples) >= limit:
            break
        stats.rows_read += 1
        try:
            if isinstance(record, _BadRow):
                raise record
            if not isinstance(record, dict):
                got = type(record).__name__
                raise _BadRow("not an object", f"expected an object with named fields, got a {got}")
            question, reference, solution = convert(record)
        except _BadRow as bad:
            if on_bad_row == "error":
                raise DatasetError(f"{table.label}: {where}: {bad.detail}. Fix or remove the row, or set "
                                   "data.on_bad_row=skip to skip such rows") from None
            stats.rows_skipped += 1
            stats.skipped_reasons[bad.reason] = stats.skipped_reasons.get(bad.reason, 0) + 1
            continue
        prompt = build_prompt(question) if name != "prompts" else (
            question if not cols.instruction else f"{question}\n\n{cols.instruction.strip()}")
        examples.append(Example(id=f"{name}/{table.id_part}/{index}", question=question,
                                prompt=prompt, reference=reference, solution=solution))
    stats.rows_used = len(examples)
    if not examples:
        why = f" ({stats.rows_skipped} skipped: {stats.skipped_reasons})" if stats.rows_skipped else ""
        raise DatasetError(f"{table.label}: no usable rows{why}")
    return examples, stats


def load_examples(
    name: str,
    source: str | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    on_bad_row: str = "error",
    levels: Sequence[int] = (1, 2, 3),
    columns: PromptColumns | None = None,
    hub_config: str | None = None,
) -> tuple[list[Example], DataStats]:
    """Load problems by dataset name from the hub or a local path; see the module docstring for why.

    ``source``: None for the default (built-in task, or the hub dataset), a hub name, or a local
    ``.jsonl/.json/.csv/.parquet`` file or a folder holding ``{split}.jsonl``. ``limit`` keeps the first N
    usable rows; nothing is shuffled here (the trainer shuffles with its own seed). ``seed`` and ``levels``
    apply to the arithmetic task only; ``columns`` to ``prompts`` only; ``hub_config`` to a hub source.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} (set data.name)")
    if on_bad_row not in ("error", "skip"):
        raise DatasetError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"data.limit must be a positive integer or null, got {limit!r}")
    if source is not None and not str(source).strip():
        source = None
    if name == "arithmetic":
        if source is not None:
            raise DatasetError(f"the arithmetic task is built in and reads no files; unset data.source "
                               f"(it is {source!r})")
        n = limit if limit is not None else _ARITHMETIC_DEFAULT_SIZE.get(split, 200)
        examples = make_arithmetic(n, seed, levels, split=split)
        label = f"builtin:arithmetic(split={split}, seed={seed}, levels={list(_check_levels(levels))})"
        return examples, DataStats(source=label, rows_read=n, rows_used=n)
    if name == "prompts" and source is None:
        raise DatasetError("data.name=prompts needs data.source: a local .jsonl/.json/.csv/.parquet file or folder, "
                           "or a hub dataset name")
    source = str(source) if source is not None else DEFAULT_SOURCES[name]
    if source == DEFAULT_SOURCES["math"] and split != "test":
        raise DatasetError(f"{source} has only a 'test' split, not {split!r}: set data.split=test, or pass "
                           "another MATH file or hub dataset as data.source")
    table = _read_local(source, split) if _looks_like_path(source) else _read_hub(name, source, split, hub_config)
    if not table.rows:
        raise DatasetError(f"{table.label}: the dataset is empty (no rows)")
    _check_columns(name, table, columns)
    return _convert(name, table, limit, on_bad_row, columns)


def load_training_data(d: DataConfig, seed: int) -> tuple[list[Example], DataStats]:
    """The training problems a config's ``data`` section names (the arithmetic task: 2,000 by default)."""
    return load_examples(
        d.name, d.source, d.split, limit=d.limit or (2000 if d.name == "arithmetic" else None), seed=seed,
        on_bad_row=d.on_bad_row, levels=d.levels, hub_config=d.hub_config,
        columns=PromptColumns(d.question_column, d.answer_column, d.solution_column, d.instruction),
    )


def step_examples(examples: Sequence[Example], step: int, per_step: int, seed: int, shuffle: bool) -> list[Example]:
    """The prompts of training step ``step``: a seeded permutation per epoch, so the data position is a function of
    the step alone (exact resume needs no sampler state)."""
    n = len(examples)
    per_epoch = max(1, n // per_step)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}-epoch-{epoch}").shuffle(order)
    return [examples[i] for i in order[pos * per_step : (pos + 1) * per_step]]
