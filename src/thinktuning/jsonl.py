"""JSON lines, the format of every run log: one reader (strict, or skipping what a crash cut short), one writer,
and the truncation a resumed run applies. The data loader reads numbered lines through :func:`iter_jsonl`, and
other text files through :func:`read_utf8`: a byte that is not UTF-8 is a :class:`~thinktuning.errors.NotUtf8Error`
naming the file and line, never a UnicodeDecodeError traceback (whatever ``data.on_bad_row`` says: a file in
another encoding is wrong as a whole, not in one row)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from thinktuning.errors import NotUtf8Error


def decode_utf8(raw: bytes, path: str | Path) -> str:
    """``raw`` as text; NotUtf8Error naming the line and column (both from 1, the column in bytes) of the first byte
    that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise NotUtf8Error(str(path), line, f"byte 0x{raw[exc.start]:02x} at column {column}: {exc.reason}") from None


def read_utf8(path: str | Path) -> str:
    """A whole UTF-8 text file (see :func:`decode_utf8` for what a byte in another encoding raises)."""
    return decode_utf8(Path(path).read_bytes(), path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for every non-blank line; a line that is not JSON yields its
    :class:`json.JSONDecodeError` as the record, so the caller decides what a bad line means. A byte that is not
    UTF-8 raises NotUtf8Error (naming the line) when the reader reaches it."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield lineno, exc
    except UnicodeDecodeError:
        read_utf8(path)  # the text decoder's offset is within a buffer: find the line in the bytes, and raise
        raise


def read_jsonl(path: str | Path, bad_lines: Literal["error", "skip"] = "error") -> list[dict[str, Any]]:
    """The records of a JSON-lines file. ``bad_lines="skip"`` drops lines that are not a JSON object (a line cut
    short by a crash) and returns [] for a missing file; ``"error"`` raises on them."""
    if bad_lines == "skip" and not Path(path).is_file():
        return []
    out = []
    for lineno, record in iter_jsonl(path):
        if isinstance(record, dict):
            out.append(record)
        elif bad_lines == "error":
            raise ValueError(f"{path}, line {lineno}: not a JSON object ({record})")
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not measured/invalid"
    return value


class JsonlWriter:
    """Append-only JSON lines, flushed per write so a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records of steps after ``last_step`` (work after the checkpoint a resumed run restarts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
