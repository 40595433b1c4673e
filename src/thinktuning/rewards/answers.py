"""Answer extraction: which part of a response is its final answer. Pure functions, standard library only.

Extraction must be predictable, because the reward is the only signal GRPO learns from: the *last* top-level
``\\boxed{}`` wins, nested braces are respected, and the optional last-number fallback is explicit. The
equivalence check (is this answer the reference?) is :mod:`thinktuning.rewards.checker`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["boxed_answers", "extract_answer", "extract_boxed", "extract_last_number", "is_unevaluated"]

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A sign counts only where it cannot be a binary minus ("10-5" is a subtraction, not -5).
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _top_level_boxes(text: str) -> list[str | None]:
    """Contents of the top-level boxes in order; None marks a box that is never closed (truncated text)."""
    boxes: list[str | None] = []
    pairs = _brace_pairs(text)
    pos = 0
    while True:
        m = _BOX_OPEN.search(text, pos)
        if m is None:
            return boxes
        close = pairs.get(m.end() - 1)
        if close is None:
            boxes.append(None)
            return boxes
        boxes.append(text[m.end() : close])
        pos = close + 1


def boxed_answers(text: str) -> list[str]:
    """Every closed, non-empty top-level box in order, nested boxes unwrapped: the answers a response gave, first
    to last (how often a later answer differs from the first is what a self-check changed)."""
    return [b for b in (_unwrap_boxes(x).strip() for x in _top_level_boxes(text) if x is not None) if b]


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``; None if absent or unbalanced.

    Why these rules: models often box intermediate results and then the final one, so the last box is the
    answer. A box nested inside a box (``\\boxed{\\boxed{5}}``) is unwrapped to ``5``. Empty boxes are
    ignored, because a model that echoes the instruction ("inside \\boxed{} notation") has not answered.
    If the last box is never closed the response was cut off mid-answer, and no earlier box is promoted
    to be "the" answer: None.
    """
    if not isinstance(text, str):
        return None
    boxes = [b for b in _top_level_boxes(text) if b is None or b.strip()]
    if not boxes or boxes[-1] is None:
        return None
    return _unwrap_boxes(boxes[-1].strip())


def _brace_pairs(text: str) -> dict[int, int]:
    """Every ``{`` index mapped to its closing ``}``, in one pass. A backslash escapes the next character, so
    ``\\{`` and ``\\}`` (literal braces in LaTeX sets) do not count, while ``\\\\{`` (a line break followed by a
    group) does. An unclosed ``{`` has no entry."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _unwrap_boxes(content: str) -> str:
    """``\\boxed{\\boxed{5}}`` -> ``5``: peel boxes that wrap the whole content, in linear time.

    Peeling by re-scanning the content once per layer was quadratic: 5,000 nested boxes took ~15 s.
    """
    pairs: dict[int, int] | None = None
    lo, hi = 0, len(content)  # the current content is content[lo:hi], already stripped
    while (m := _BOX_OPEN.match(content, lo, hi)) is not None:
        if pairs is None:
            pairs = _brace_pairs(content)
        if pairs.get(m.end() - 1) != hi - 1:
            break
        inner_lo, inner_hi = m.end(), hi - 1
        while inner_lo < inner_hi and content[inner_lo].isspace():
            inner_lo += 1
        while inner_hi > inner_lo and content[inner_hi - 1].isspace():
            inner_hi -= 1
        if inner_lo == inner_hi:
            break
        lo, hi = inner_lo, inner_hi
    return content[lo:hi]


def extract_last_number(text: str) -> str | None:
    """The last number written in ``text``, normalised: ``"$1,234.50."`` -> ``"1234.50"``.

    Used as an optional fallback for models that never learned the ``\\boxed{}`` format (a 135M student
    rarely boxes unasked). Thousands separators are dropped, a sentence-final period is not part of the
    number, and a minus sign counts only where it cannot be a subtraction.
    """
    if not isinstance(text, str):
        return None
    found = _NUMBER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "")


_FALLBACKS = ("none", "last_number")


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The final answer of a response: the last box, else (if ``fallback="last_number"``) the last number.

    The default is strict (``"none"``) because the paper rewards the boxed answer only; the fallback exists
    for weak students on the CPU demo and must be chosen explicitly.
    """
    if fallback not in _FALLBACKS:
        raise ValueError(f"answer fallback must be one of {_FALLBACKS}, got {fallback!r}")
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if fallback == "last_number":
        return extract_last_number(text)
    return None


def _normalise_reference(reference: Any) -> str:
    """Reference answer as a bare string: numbers stringified, ``$..$`` and a wrapping box removed."""
    ref = str(reference).strip()
    if "\\boxed" in ref or "\\fbox" in ref:
        ref = extract_boxed(ref) or ref
    return ref.strip().strip("$").strip()


def _same_text(pred: str, ref: str) -> bool:
    """Exact match modulo whitespace: always a correct verdict, and free (no worker round-trip).

    It also rescues textual answers (``\\text{Evelyn}``) that math-verify cannot parse.
    """
    return "".join(pred.split()) == "".join(ref.split())


_OPERAND = r"\(*\s*-?\d+(?:[.,]\d+)*\s*\)*"
_OPERATOR = r"(?:[-+*/x×÷]|\\times|\\cdot|\\div)"
_COMPUTATION = re.compile(rf"^\s*{_OPERAND}(?:\s*{_OPERATOR}\s*{_OPERAND})+\s*$")
_FRACTION = re.compile(rf"^\s*{_OPERAND}\s*/\s*{_OPERAND}\s*$")


def is_unevaluated(pred: str, reference: str) -> bool:
    """Whether ``pred`` is arithmetic still to be done (``25 + 41``) where the reference is a number (``66``).

    math-verify evaluates both sides, so it counts ``\\boxed{25 + 41}`` as the answer 66: a student paid for
    restating the question learns to (``experiments/RESULTS.md``, point 10). A single fraction (``3/4``) is a
    final form and is not caught; nor is anything with a symbol, root or ``=``.
    """
    ref = _normalise_reference(reference).replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", ref):
        return False
    return bool(_COMPUTATION.match(pred)) and not _FRACTION.match(pred)
