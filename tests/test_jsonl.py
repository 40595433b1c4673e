"""The one JSON-lines reader: strict by default, skipping what a crash cut short when asked."""

from __future__ import annotations

import json

import pytest

from thinktuning.errors import NotUtf8Error
from thinktuning.jsonl import decode_utf8, iter_jsonl, read_jsonl, read_utf8


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


def test_bytes_that_are_not_utf8_name_the_line_and_column(tmp_path):
    """A Latin-1 'é' (0xe9) on line 3: one clear error however the file is read, never a traceback."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"q": "a"}\n\n{"q": "caf\xc3\xa9", "r": "caf\xe9"}\n{"q": "b"}\n')
    for read in (lambda: list(iter_jsonl(path)), lambda: read_jsonl(path, "skip"), lambda: read_utf8(path)):
        with pytest.raises(NotUtf8Error) as info:
            read()
        assert (info.value.path, info.value.line) == (str(path), 3)
        # columns count bytes: {"q": "caf = 10, the UTF-8 é = 2, then ", "r": "caf = 12, so 0xe9 is byte 25
        assert info.value.detail == "byte 0xe9 at column 25: invalid continuation byte"
        assert str(info.value).startswith(f"{path}: line 3 is not UTF-8 text (byte 0xe9 at column 25")
        assert "Re-save the file as UTF-8" in str(info.value)
    assert decode_utf8("café\n".encode(), "x") == "café\n"
    with pytest.raises(NotUtf8Error, match=r"^x: line 1 is not UTF-8 text \(byte 0xff at column 1: invalid start"):
        decode_utf8(b"\xff", "x")
