"""Evaluation benchmarks: GSM8K, MATH-500, AIME 2024/2025, AMC 2023, GPQA-Diamond and the built-in arithmetic task.

Every benchmark becomes a list of :class:`~thinktuning.data.examples.Example` (the trainer's own shape and prompt
format), so a model is evaluated on exactly the prompt wording it was trained with. The maths sets are read by the
trainer's loaders (``data.load_examples``), which turn every data mistake into a :class:`DatasetError` naming the
row; this module adds where each benchmark lives (a hub name, or ``DIR/<name>/test.jsonl`` under ``--data-dir``),
GPQA-Diamond's multiple choice, and a record of exactly which data was used (path or hub id, and a content hash).

Where to look: with ``--data-dir`` the local copy wins (the user named it) and the hub is the fallback; without
it, the hub. A benchmark found in neither place fails with a message naming both places and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from thinktuning.data.examples import Example, build_prompt
from thinktuning.data.load import load_examples
from thinktuning.errors import DatasetError
from thinktuning.rewards.answers import extract_boxed

__all__ = ["BENCHMARKS", "GPQA_INSTRUCTION", "Benchmark", "extract_choice", "gpqa_example", "load_benchmark",
           "parse_benchmarks"]

BENCHMARKS = ("gsm8k", "math500", "aime24", "aime25", "amc23", "gpqa-diamond", "arithmetic")

# name -> (loader name in data.py, hub id, hub split). Hub ids are the copies the field's eval harnesses use.
_HUB: dict[str, tuple[str, str, str]] = {
    "gsm8k": ("gsm8k", "openai/gsm8k", "test"),
    "math500": ("math", "HuggingFaceH4/MATH-500", "test"),
    "aime24": ("math", "HuggingFaceH4/aime_2024", "train"),
    "aime25": ("math", "math-ai/aime25", "test"),
    "amc23": ("math", "math-ai/amc23", "test"),
}
GPQA_HUB = ("Idavidrein/gpqa", "gpqa_diamond", "train")
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
_GPQA_FILES = ("gpqa-diamond/test.csv", "gpqa-diamond/gpqa_diamond.csv", "gpqa/gpqa_diamond.csv", "gpqa_diamond.csv")
GPQA_INSTRUCTION = ("Let's think step by step and provide your final answer (the letter of the correct choice) "
                    "inside \\boxed{} notation.")
LETTERS = "ABCD"


@dataclass(frozen=True)
class Benchmark:
    """One loaded benchmark. ``kind`` is ``math`` (math-verify checks the answer) or ``choice`` (a letter)."""

    name: str
    examples: list[Example]
    kind: str
    source: str
    """Where the data came from: a file path, ``hub:<id>``, or ``builtin:arithmetic(...)``."""
    version: str
    """A content hash of the items used (sha256 of question + reference, 16 hex digits): equal means same data."""


def parse_benchmarks(text: str) -> list[str]:
    """``"gsm8k, math500"`` -> ``["gsm8k", "math500"]``; unknown names fail with the valid list."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise DatasetError(f"unknown benchmark(s) {unknown or [text]}; valid names: {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def _version(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.question.encode())
        h.update(b"\x00")
        h.update(ex.reference.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def _renamed(name: str, examples: list[Example]) -> list[Example]:
    """Ids ``<benchmark>/<index>``: stable across sources, so records of two runs line up."""
    return [replace(ex, id=f"{name}/{i}") for i, ex in enumerate(examples)]


def load_benchmark(
    name: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    levels: Sequence[int] = (1, 2),
) -> Benchmark:
    """Load one benchmark (first ``limit`` items); ``seed`` shuffles GPQA's choices and seeds ``arithmetic``."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    if name == "arithmetic":
        examples, stats = load_examples("arithmetic", split="test", limit=limit, seed=seed, levels=levels)
        return Benchmark(name, _renamed(name, examples), "math", stats.source, _version(examples))
    if name == "gpqa-diamond":
        return _load_gpqa(data_dir, limit, seed)
    loader, hub_id, hub_split = _HUB[name]
    tried: list[str] = []
    if data_dir is not None:
        path = Path(data_dir).expanduser() / name / "test.jsonl"
        if path.is_file():
            examples, _ = load_examples(loader, source=str(path), split="test", limit=limit)
            return Benchmark(name, _renamed(name, examples), "math", str(path), _version(examples))
        tried.append(f"{path} (no such file)")
    try:
        examples, _ = load_examples(loader, source=hub_id, split=hub_split, limit=limit)
    except DatasetError as err:
        if not str(err).startswith("hub load"):
            raise  # the hub answered, but with data we cannot use: that message is the useful one
        why = str(err).partition("failed: ")[2].partition(". If you are offline")[0] or str(err)
        tried.append(f"hub dataset {hub_id} (split {hub_split}): {why[:200]}")
        raise DatasetError(_not_found(name, tried, f"{name}/test.jsonl")) from None
    return Benchmark(name, _renamed(name, examples), "math", f"hub:{hub_id}", _version(examples))


def _not_found(name: str, tried: list[str], local: str) -> str:
    return (f"benchmark {name!r} not found; looked in: {'; '.join(tried)}. Fix: pass --data-dir DIR with "
            f"DIR/{local}, or connect to the Hugging Face hub (and set HF_TOKEN for gated datasets)")


# --------------------------------------------------------------------------------------------------------
# GPQA-Diamond: four choices, shuffled per question with a fixed seed, answered by letter
# --------------------------------------------------------------------------------------------------------


def gpqa_example(record: dict, index: int, seed: int, where: str) -> Example:
    """One GPQA row as a lettered multiple-choice Example whose reference is the correct letter.

    The order of the choices depends only on (seed, question), so it does not change with ``--limit`` or with
    row order, and two models evaluated with the same seed see the same letters.
    """
    values = []
    for col in GPQA_COLUMNS:
        value = record.get(col)
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: row {index + 1}: column {col!r} is missing or empty; GPQA rows need "
                               f"{', '.join(repr(c) for c in GPQA_COLUMNS)}")
        values.append(value.strip())
    question, choices = values[0], values[1:]
    digest = hashlib.sha256(repr(("gpqa-choices", seed, question)).encode()).digest()
    order = list(range(4))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    lines = "\n".join(f"{LETTERS[pos]}) {choices[i]}" for pos, i in enumerate(order))
    text = f"{question}\n\n{lines}"
    return Example(id=f"gpqa-diamond/{index}", question=text, prompt=build_prompt(text, GPQA_INSTRUCTION),
                   reference=LETTERS[order.index(0)])


def _load_gpqa(data_dir: str | Path | None, limit: int | None, seed: int) -> Benchmark:
    tried: list[str] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for rel in _GPQA_FILES:
            path = root / rel
            if path.is_file():
                return _gpqa_from_rows(_read_csv(path), str(path), limit, seed)
        tried.append(f"{', '.join(str(root / rel) for rel in _GPQA_FILES)} (none exists)")
    hub_id, config, split = GPQA_HUB
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        tried.append(f"hub dataset {hub_id} (config {config}, gated): {type(exc).__name__}: {first}")
        raise DatasetError(_not_found("gpqa-diamond", tried, "gpqa-diamond/test.csv (columns "
                                      + ", ".join(GPQA_COLUMNS) + ")")) from None
    return _gpqa_from_rows(list(ds), f"hub:{hub_id}/{config}", limit, seed)


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in GPQA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing GPQA column(s) {missing}; found {reader.fieldnames}")
        return list(reader)


def _gpqa_from_rows(rows: list[dict], source: str, limit: int | None, seed: int) -> Benchmark:
    if not rows:
        raise DatasetError(f"{source}: no GPQA rows")
    rows = rows[:limit] if limit is not None else rows
    examples = [gpqa_example(rec, i, seed, source) for i, rec in enumerate(rows)]
    return Benchmark("gpqa-diamond", examples, "choice", source, _version(examples))


# --------------------------------------------------------------------------------------------------------
# Reading a letter answer
# --------------------------------------------------------------------------------------------------------

_BOXED_LETTER = re.compile(r"^\(?([A-D])\)?(?:$|[\s).:])")
_ANSWER_IS = re.compile(r"(?i:answer)(?:\s*(?i:is|:))?\s*[:*$\s]*\(?\**([A-D])\b\)?")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}$", re.DOTALL)


def extract_choice(text: str) -> str | None:
    """The letter a multiple-choice response picks: the last ``\\boxed{}`` if it holds a letter (``C``, ``(C)``,
    ``\\text{C}``, ``C) 42``), else the last "answer is (C)" / "Answer: C". None when neither is there.

    A box that holds something other than a letter (the choice's value, say) is not guessed into a letter: the
    prompt asks for the letter, and a verdict must be checkable by reading the response.
    """
    if not isinstance(text, str):
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = boxed.strip().strip("$").strip()
        while (m := _TEXT_WRAP.match(inner)) is not None:
            inner = m.group(1).strip()
        m = _BOXED_LETTER.match(inner)
        if m:
            return m.group(1)
    found = _ANSWER_IS.findall(text)
    return found[-1] if found else None
