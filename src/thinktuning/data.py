"""Training and evaluation problems: a built-in arithmetic task, GSM8K and MATH, from the hub or local files.

Everything downstream (sampling, the teacher, rewards) needs the same four things per problem: a stable id,
the question, the prompt the student sees, and the reference answer (plus a worked solution when one
exists, which a small teacher may be allowed to see). This module turns every source into that one shape,
and turns every data mistake a user can make into a :class:`DatasetError` that names the file, the row and
the fix, instead of a KeyError deep inside a training step.

The built-in ``arithmetic`` task exists because the embedded CPU student (SmolLM2-135M) scores about 0 on
GSM8K: RL needs problems the model solves *sometimes*, and graded levels provide them without any file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktuning.answers import extract_boxed
from thinktuning.errors import DatasetError

__all__ = [
    "DATASETS",
    "INSTRUCTION",
    "DataStats",

    "Example",
    "build_prompt",
    "load_examples",
    "make_arithmetic",
]

INSTRUCTION = "Let's think step by step and provide your final answer inside \\boxed{} notation."

DATASETS = ("arithmetic", "gsm8k", "math")
DEFAULT_SOURCES = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500"}
_HUB_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_ARITHMETIC_DEFAULT_SIZE = {"train": 2000}  # other splits: 200
_ARITHMETIC_LEVELS = (1, 2, 3, 4)
_TRAIN_SHARE = 80  # percent of the arithmetic problem space reserved for the train split



@dataclass(frozen=True)
class Example:
    """One problem, in the single shape the rest of the package consumes."""

    id: str
    question: str
    prompt: str
    reference: str
    solution: str | None = None


@dataclass
class DataStats:
    """What loading did, so a run can report how much of a file was usable and why rows were dropped."""

    source: str
    rows_read: int = 0
    rows_used: int = 0
    rows_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)


def build_prompt(question: str, instruction: str = INSTRUCTION) -> str:
    """The user-turn text: question, blank line, instruction (the recipe's prompt format).

    Benchmarks such as MATH-500 ship questions that already end with a ``\\boxed{}`` instruction; adding a
    second one would give the student two slightly different orders, so it is added only when absent.
    """
    question = question.strip()
    if not instruction or "\\boxed" in question:
        return question
    return f"{question}\n\n{instruction}"


# --------------------------------------------------------------------------------------------------------
# The built-in arithmetic task
# --------------------------------------------------------------------------------------------------------

_PEOPLE = [
    ("Maya", "she", "her"), ("Tom", "he", "him"), ("Aisha", "she", "her"), ("Leo", "he", "him"),
    ("Sofia", "she", "her"), ("Ravi", "he", "him"), ("Emma", "she", "her"), ("Kenji", "he", "him"),
    ("Lucia", "she", "her"), ("Omar", "he", "him"), ("Nora", "she", "her"), ("Sam", "he", "him"),
]
_THINGS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "shells", "cards",
           "balloons", "crayons", "oranges"]
_CONTAINERS = ["packs", "boxes", "bags"]


@dataclass(frozen=True)
class _Problem:
    key: tuple  # the computation only (operation, operands): decides split membership and de-duplication
    question: str
    answer: int
    solution: str


def _level1(rng: random.Random) -> _Problem:
    # single digits: the level SmolLM2-135M solves sometimes (measured ~17% at temperature 1), so RL has signal
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    form = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
                       "What is the sum of {a} and {b}?"])
    return _Problem(("+", *sorted((a, b))), form.format(a=a, b=b), a + b, f"{a} + {b} = {a + b}.")


def _level2(rng: random.Random) -> _Problem:
    kind = rng.choice(["add", "sub", "three", "two-digit"])
    if kind == "two-digit":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return _Problem(("+", *sorted((a, b))), f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}.")
    if kind == "three":
        a, b, c = (rng.randint(2, 20) for _ in range(3))
        total = a + b + c
        return _Problem(("+", *sorted((a, b, c))), f"What is {a} + {b} + {c}?", total,
                        f"{a} + {b} = {a + b}, and {a + b} + {c} = {total}.")
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    if kind == "add":
        return _Problem(("+", *sorted((a, b))), f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}.")
    a, b = max(a, b), min(a, b)
    return _Problem(("-", a, b), f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}.")


def _level3(rng: random.Random) -> _Problem:
    (name, he, him), thing = rng.choice(_PEOPLE), rng.choice(_THINGS)
    other = rng.choice([p[0] for p in _PEOPLE if p[0] != name])
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.choice(["buy", "gift", "together", "give", "lose"])
    if kind in ("give", "lose"):
        a, b = max(a, b) + 1, min(a, b)
        if kind == "give":
            q = (f"{name} has {a} {thing}. {he.capitalize()} gives {b} of them to {other}. "
                 f"How many {thing} does {name} have left?")
            sol = f"{name} gives away {b} of {_his(he)} {a} {thing}, so {a} - {b} = {a - b}."
        else:
            q = (f"{name} had {a} {thing} but lost {b} of them on the way home. "
                 f"How many {thing} does {name} have now?")
            sol = f"{name} loses {b} of {_his(he)} {a} {thing}, so {a} - {b} = {a - b}."
        return _Problem(("-", a, b), q, a - b, sol)
    q, sol = {
        "buy": (f"{name} has {a} {thing}. {he.capitalize()} buys {b} more. How many {thing} does {name} "
                "have now?", f"{name} buys {b} more {thing}, so {a} + {b} = {a + b}."),
        "gift": (f"{name} had {a} {thing}. {other} gave {him} {b} more. How many {thing} does {name} have "
                 "now?", f"{other} gives {name} {b} more {thing}, so {a} + {b} = {a + b}."),
        "together": (f"{name} has {a} {thing} and {other} has {b} {thing}. How many {thing} do they have "
                     "together?", f"Together they have {a} + {b} = {a + b}."),
    }[kind]
    return _Problem(("+", *sorted((a, b))), q, a + b, sol)


def _his(he: str) -> str:
    """Possessive pronoun for the subject pronoun used in the templates."""
    return "his" if he == "he" else "her"


def _level4(rng: random.Random) -> _Problem:
    (name, he, _him), thing = rng.choice(_PEOPLE), rng.choice(_THINGS)
    other = rng.choice([p[0] for p in _PEOPLE if p[0] != name])
    kind = rng.choice(["buy_give", "give_buy", "packs_give", "packs_have"])
    if kind in ("packs_give", "packs_have"):
        p, k, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 15)
        box = rng.choice(_CONTAINERS)
        made = p * k
        if kind == "packs_give":
            c = min(c, made - 1)
            q = (f"{name} buys {p} {box} of {thing} with {k} {thing} in each. {he.capitalize()} gives {c} "
                 f"{thing} to {other}. How many {thing} does {name} have left?")
            return _Problem(("*-", *sorted((p, k)), c), q, made - c,
                            f"{name} buys {p} * {k} = {made} {thing}, then has {made} - {c} = {made - c}.")
        q = (f"{name} already has {c} {thing} and buys {p} {box} with {k} {thing} in each. How many {thing} "
             f"does {name} have now?")
        return _Problem(("*+", *sorted((p, k)), c), q, made + c,
                        f"The {box} hold {p} * {k} = {made} {thing}, so {made} + {c} = {made + c}.")
    a, b, c = rng.randint(5, 30), rng.randint(2, 20), rng.randint(2, 20)
    if kind == "buy_give":
        c = min(c, a + b)
        q = (f"{name} has {a} {thing}. {he.capitalize()} buys {b} more and then gives {c} to {other}. "
             f"How many {thing} does {name} have now?")
        return _Problem(("+-", *sorted((a, b)), c), q, a + b - c,
                        f"First {a} + {b} = {a + b}, then {a + b} - {c} = {a + b - c}.")
    b = min(b, a - 1)
    q = (f"{name} has {a} {thing}. {he.capitalize()} gives {b} to {other} and then buys {c} more. "
         f"How many {thing} does {name} have now?")
    return _Problem(("-+", a, b, c), q, a - b + c,
                    f"First {a} - {b} = {a - b}, then {a - b} + {c} = {a - b + c}.")


_GENERATORS: dict[int, Callable[[random.Random], _Problem]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4}


def _digest(*parts: object) -> int:
    """A stable hash (Python's ``hash`` of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _in_split(key: tuple, split: str) -> bool:
    """Train owns a fixed 80% of the problem space, every other split the rest: they can never overlap.

    Membership depends on the computation only (not on level, names, wording or seed), so no held-out
    problem is a reworded training problem: if "What is 27 + 14?" is held out, so is "Maya has 27 apples
    and buys 14 more", whatever seeds the two sides use.
    """
    in_train = _digest("arithmetic-partition", key) % 100 < _TRAIN_SHARE
    return in_train == (split == "train")


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(lv not in _ARITHMETIC_LEVELS for lv in levels):
        raise DatasetError(f"arithmetic levels must be a non-empty subset of {_ARITHMETIC_LEVELS}, "
                           f"got {list(levels)} (set data.levels=[1,2,3])")
    return levels


def make_arithmetic(
    n: int, seed: int, levels: Sequence[int] = (1, 2, 3), *, split: str = "train"
) -> list[Example]:
    """``n`` arithmetic problems, cycling through ``levels`` so every level is equally represented.

    Problems are distinct (by computation and wording) while the level's space lasts; a small level (single
    digits) then repeats problems rather than failing, which is what a long training run on it needs.
    Levels: 1 = one addition of single digits; 2 = two-digit addition, 2–3 digit addition/subtraction or three
    small addends; 3 = one-step word problems; 4 = two-step word problems. Answers are non-negative integers.
    The same (n, seed, levels, split) always gives the same list; ``split`` both seeds a separate random
    stream and selects a disjoint part of the problem space (see ``_in_split``).
    """
    if n < 0:
        raise DatasetError(f"the number of arithmetic problems must be >= 0, got {n}")
    levels = _check_levels(levels)
    rng = random.Random(_digest("arithmetic-stream", seed, split))
    seen: set[tuple] = set()
    out: list[Example] = []
    misses = 0  # consecutive rejected draws; many in a row means this part of the space is used up
    exhausted: set[int] = set()  # levels whose distinct problems are used up: they repeat from then on
    while len(out) < n:
        if misses > 100_000:
            raise DatasetError(f"cannot make {n} arithmetic problems of levels {list(levels)} for "
                               f"split {split!r}; ask for fewer (data.limit) or add levels")
        level = levels[len(out) % len(levels)]
        problem = _GENERATORS[level](rng)
        ident = (problem.key, problem.question)
        if misses > 2000:
            exhausted.add(level)
        if not _in_split(problem.key, split) or (ident in seen and level not in exhausted):
            misses += 1
            continue
        misses = 0
        seen.add(ident)
        out.append(Example(id=f"arithmetic/{split}/seed{seed}/{len(out)}", question=problem.question,
                           prompt=build_prompt(problem.question), reference=str(problem.answer),
                           solution=problem.solution))
    return out


# --------------------------------------------------------------------------------------------------------
# Reading files and hub datasets into (where, record) rows
# --------------------------------------------------------------------------------------------------------


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
    rows: list[tuple[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((f"line {lineno}", _BadRow("invalid JSON", f"invalid JSON ({exc.msg})")))
    return rows


def _read_local_file(path: Path) -> tuple[list[str] | None, list[tuple[str, Any]]]:
    """Rows of one file with the place each came from (line for JSON lines, row otherwise)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return None, _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None, _read_jsonl(path)  # many ".json" files are really JSON lines
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            got = type(data).__name__
            raise DatasetError(f"{path}: expected a JSON list of objects (or JSON lines), got a {got}")
        return None, [(f"row {i}", rec) for i, rec in enumerate(data, start=1)]
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = [(f"row {i}", dict(rec)) for i, rec in enumerate(reader, start=1)]
            return list(reader.fieldnames or []), rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.column_names, [(f"row {i}", rec) for i, rec in enumerate(table.to_pylist(), start=1)]
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_LOCAL_SUFFIXES)}")


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


def _read_hub(name: str, source: str, split: str) -> _Table:
    """The real hub path (datasets.load_dataset); offline, its failure says how to use a local copy."""
    import datasets

    config = _HUB_CONFIGS.get(source)
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        hint = f"../shared/data/{'math500' if name == 'math' else name}"
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


def _check_columns(name: str, table: _Table) -> None:
    cols = set(table.columns)
    if name == "gsm8k":
        missing = [c for c in ("question", "answer") if c not in cols]
        needed = "'question' and 'answer' (a worked solution ending '#### <number>')"
    else:
        missing = [] if cols & {"problem", "question"} else ["problem"]
        if not cols & {"answer", "solution"}:
            missing.append("answer")
        needed = "'problem' (or 'question') and 'answer' (or a 'solution' with a \\boxed{} answer)"
    if missing:
        raise DatasetError(f"{table.label}: missing column(s) {missing} for dataset {name!r}. Columns found: "
                           f"{sorted(cols) or 'none'}; columns needed: {needed}")


def _convert(name: str, table: _Table, limit: int | None, on_bad_row: str) -> tuple[list[Example], DataStats]:
    stats = DataStats(source=table.label)
    convert = _gsm8k_row if name == "gsm8k" else _math_row
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
        examples.append(Example(id=f"{name}/{table.id_part}/{index}", question=question,
                                prompt=build_prompt(question), reference=reference, solution=solution))
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
) -> tuple[list[Example], DataStats]:
    """Load problems by dataset name from the hub or a local path; see the module docstring for why.

    ``source``: None for the default (built-in task, or the hub dataset), a hub name, or a local
    ``.jsonl/.json/.csv/.parquet`` file or a folder holding ``{split}.jsonl``. ``limit`` keeps the first N
    usable rows; nothing is shuffled here (the trainer shuffles with its own seed). ``seed`` and ``levels``
    apply to the arithmetic task only.
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
    source = str(source) if source is not None else DEFAULT_SOURCES[name]
    if source == DEFAULT_SOURCES["math"] and split != "test":
        raise DatasetError(f"{source} has only a 'test' split, not {split!r}: set data.split=test, or pass "
                           "another MATH file or hub dataset as data.source")
    table = _read_local(source, split) if _looks_like_path(source) else _read_hub(name, source, split)
    if not table.rows:
        raise DatasetError(f"{table.label}: the dataset is empty (no rows)")
    _check_columns(name, table)
    return _convert(name, table, limit, on_bad_row)

