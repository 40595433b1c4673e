"""The one JSON-lines reader: strict by default, skipping what a crash cut short when asked."""

from __future__ import annotations

import json

import pytest

from thinktuning.jsonl import iter_jsonl, read_jsonl


def test_strict_reading_names_the_bad_line_and_skipping_drops_it(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "cut', encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl, line 4: not a JSON object"):
        read_jsonl(path)
    assert read_jsonl(path, "skip") == [{"step": 1}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl", "skip") == []
    numbered = list(iter_jsonl(path))
    assert [n for n, _ in numbered] == [1, 3, 4]  # blank line 2 is not a record
    assert isinstance(numbered[-1][1], json.JSONDecodeError)
