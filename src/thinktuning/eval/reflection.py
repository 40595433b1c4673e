"""Detect reflective behaviour in free text: does a math response check, doubt, or correct itself?

The four behaviours the teacher demonstrates (docs/method.md, "The four cognitive behaviours") plus two plainer ones
from Gandhi et al. (2025) are recognised by surface cues:

``self-conflict``
    notices a contradiction with the problem ("wait, the problem says...", "that's not what it said").
``self-agreement``
    retraces the work and confirms it ("let me double-check ... yes, correct", "checking each step").
``self-consultation``
    asks itself a pointed question, as a mentor would ("are you sure?", "is that right?", "did I ...?").
``self-critique``
    admits careless or hasty work and resolves to verify properly ("I rushed", "let me be more careful").
``verification``
    plain checking ("let me check", "double-check", "verify", "plug back in", "substitute back").
``backtracking``
    retracts or redoes work ("wait,", "actually,", "let me redo", "I made a mistake", "No, ..."), or re-computes
    an earlier quantity after a reflective cue (:func:`recomputes`).

This is a *cue detector*, not a judge of reasoning quality: it says a response *shows* a behaviour's wording, not
that the reflection was sound. Its use is comparative -- e.g. does the student reflect more often without the
teacher as training goes on (:func:`rollout_rates`, :func:`rates_by_step`)?

Design rules, all enforced by ``tests/test_reflection.py``:

* every pattern lives in :data:`PATTERNS`, compiled case-insensitive, anchored on word boundaries (so "waiter",
  "awaited", "checkbook", "paycheck" do not match) and free of nested quantifiers; gaps between words are bounded
  (``{0,N}``), so matching is linear in the text length;
* :data:`EXAMPLES` lists, per behaviour, texts that must and must not match; it doubles as documentation;
* the prompt suffix "provide your final answer inside \\boxed{} notation" triggers nothing.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from thinktuning.jsonl import iter_jsonl

__all__ = [
    "BEHAVIOURS",
    "EXAMPLES",
    "PATTERNS",
    "detect",
    "own_sample",
    "rates_by_step",
    "recomputes",
    "reflection_rates",
    "rollout_rates",
]

BEHAVIOURS: tuple[str, ...] = (
    "self-conflict",
    "self-agreement",
    "self-consultation",
    "self-critique",
    "verification",
    "backtracking",
)

_FLAGS = re.IGNORECASE | re.MULTILINE

# Shared fragments (plain strings, no quantified groups inside quantified groups).
_PROBLEM = r"(?:problem|question)"
_STATES = r"(?:says|said|states|stated|asks|asked|tells us|told us|specifies|specified|gives|gave|mentions)"
_SENTENCE_START = r"(?:^|[.!?\n])\s{0,3}"  # start of text/line, or just after sentence punctuation
_I_WILL = r"(?:let me|let's|let us|i'll|i will|i should|i need to|i must|we can|i can|now i|now let me)"


def _compile(*sources: str) -> tuple[re.Pattern[str], ...]:
    """Compile with :data:`_FLAGS`; a straight apostrophe also matches a curly one ("let’s", "that’s")."""
    return tuple(re.compile(s.replace("'", "['’]"), _FLAGS) for s in sources)


PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "self-conflict": _compile(
        rf"\b(?:wait|hold on|hmm|but)\b[^.!?\n]{{0,40}}\bthe {_PROBLEM} (?:actually |clearly |explicitly )?{_STATES}\b",
        rf"\b(?:that|this)(?:'s| is| was) not what (?:it|the {_PROBLEM}) {_STATES}",
        rf"\b(?:contradicts|contradiction with|inconsistent with|conflicts with) (?:what )?the {_PROBLEM}\b",
        r"\bi (?:misread|misunderstood|overlooked|ignored|missed) (?:the|what|that|a|part)\b",
        rf"\bre-?read(?:ing)? the {_PROBLEM}\b",
    ),
    "self-agreement": _compile(
        # an announced check followed (within the paragraph) by an affirmation that is not negated
        r"\b(?:let me|let's|let us|i'll|i will|now i|to) (?:verify|double[- ]check|re-?check|check|confirm|retrace)\b"
        r"[^\n]{0,200}?(?<!not )(?<!n't )\b(?:yes|correct|confirmed|checks out|consistent|matches|that's right)\b",
        r"\bchecking (?:each|every|all the|all) (?:step|steps|relation|relations|calculation|calculations)\b",
        r"\b(?:retrac(?:e|ing)|going back over|go back over) (?:the|my|each|every|all) "
        r"(?:steps?|work|calculations?|reasoning|relations?)\b",
        r"\b(?:this|that|it|everything|all|each step|the answer)(?: all)? (?:checks out|is confirmed|is consistent)\b",
        r"\b(?:which|this|that) confirms (?:the|my|our) (?:answer|result)\b",
    ),
    "self-consultation": _compile(
        r"\b(?:are you|am i|are we) (?:really |completely |absolutely )?(?:sure|certain)\b",
        r"\b(?:is|was) (?:that|this|it) (?:really |actually )?(?:right|correct|true|the right \w+)\s?\?",
        r"\bwhat if (?:i|we|you)\b[^.!?\n]{0,80}\?",
        r"\bdid (?:i|you|we)\b[^.!?\n]{0,80}\?",
        r"\b(?:does|do) (?:that|this|it|the answer) (?:really )?(?:make sense|add up)\s?\?",
        r"\b(?:a|my) (?:mentor|teacher|tutor) (?:might|would|could|will) ask\b",
        r"\bask(?:ing)? myself\b",
    ),
    "self-critique": _compile(
        r"\bi (?:was|am|have been|'ve been) (?:a bit |a little |too |being )?"
        r"(?:careless|sloppy|hasty|too quick|too fast|rushing)\b",
        r"\bi (?:rushed|hurried|skipped)\b",
        r"\bi (?:should have|should've)\b",
        rf"\b{_I_WILL}\b[^.!?\n]{{0,40}}\bmore "
        r"(?:careful(?:ly)?|rigorous(?:ly)?|thorough(?:ly)?|systematic(?:ally)?)\b",
        r"\b(?:careless|sloppy|hasty|rushed) (?:mistake|error|work|reasoning|step|calculation)\b",
    ),
    "verification": _compile(
        rf"\b{_I_WILL} (?:quickly |also |now )?(?:check|verify|confirm|double[- ]check|re-?check)\b",
        r"\bdouble[- ]check(?:s|ed|ing)?\b",
        r"\bverif(?:y|ies|ied|ying|ication)\b",
        r"\bsanity[- ]check\b",
        r"\bcheck(?:ing)?\s?:",
        r"\bplug(?:s|ging|ged)?\b[^.!?\n]{0,40}\bback in(?:to)?\b",
        r"\bsubstitut(?:e|es|ing|ed)\b[^.!?\n]{0,40}\bback\b",
    ),
    "backtracking": _compile(
        rf"{_SENTENCE_START}(?:but |oh |hmm,? |ah,? |oh,? )?wait\b",
        r"\bwait (?:a )?(?:minute|moment|second|sec)\b",
        r"\bactually,",
        r"\b(?:let me|let's|let us|i'll|i need to|i should) (?:redo|re-do|recompute|recalculate|reconsider|"
        r"rethink|re-?evaluate|re-?examine|start over|try again|try that again|go back|correct)\b",
        r"\bi made (?:a |an )?(?:small |simple |careless |arithmetic |calculation )?(?:mistake|error)\b",
        r"\b(?:that|this|it)(?:'s| is| was) (?:wrong|incorrect|not right|not correct|a mistake|an error)\b",
        rf"{_SENTENCE_START}no,",
        r"\b(?:oops|whoops|scratch that|on second thought)\b",
        r"\bmiscalculat(?:ed|ion|e)\b",
    ),
}

EXAMPLES: dict[str, dict[str, tuple[str, ...]]] = {
    "self-conflict": {
        "match": (
            "Wait, the problem says each box holds 12 eggs, not 10.",
            "That's not what it said: the train leaves at 3 pm.",
            "But the question states that she gave away half.",
            "Hmm, the problem actually says 'per week', so I must multiply by 4.",
            "This contradicts the problem, which says the price went up.",
            "I misread the problem; it asks for the remaining money.",
        ),
        "no_match": (
            "The problem says John has 3 apples, so he has 3 apples.",
            "The waiter brought 4 plates and the question asks how many remain.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
            "So the answer is \\boxed{42}.",
        ),
    },
    "self-agreement": {
        "match": (
            "Let me verify: 3 * 4 = 12, and 12 + 5 = 17. Yes, that is correct.",
            "Let me double-check the total. 40 + 60 = 100, which matches.",
            "Checking each step: the price, the discount, the tax -- all fine.",
            "Retracing the steps, the answer checks out.",
            "Going back over my work, everything is consistent.",
        ),
        "no_match": (
            "Let me check: 3 * 4 = 13? That is not correct.",
            "He wrote a check for $20 and his paycheck was $500.",
            "The correct answer is 5.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
        ),
    },
    "self-consultation": {
        "match": (
            "Are you sure about that number?",
            "So the speed is 30 mph. Is that right?",
            "What if I forgot to include the tax?",
            "Did I count the first day?",
            "A mentor would ask why I divided by 3 here.",
        ),
        "no_match": (
            "I am sure the answer is 12 because 3 * 4 = 12.",
            "What is the total cost? It is 3 + 4 = 7 dollars.",
            "Did she buy 4 apples? The problem says yes.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
        ),
    },
    "self-critique": {
        "match": (
            "I was careless with the units there.",
            "I rushed the last step, so let me redo it.",
            "I should have converted the minutes to hours first.",
            "The answer is right, but let me be more careful this time.",
            "That was a sloppy calculation; here it is properly.",
        ),
        "no_match": (
            "She should have 5 apples left.",
            "The careful reader will note that 5 + 5 = 10.",
            "He rushes to the store and buys 3 items.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
        ),
    },
    "verification": {
        "match": (
            "Let me check the arithmetic once more.",
            "To be safe, I will double-check the sum.",
            "We can verify this by adding the parts.",
            "Plugging x = 4 back into the equation gives 12 = 12.",
            "Substitute the value back: 2 * 6 = 12.",
            "Check: 7 + 8 = 15.",
        ),
        "no_match": (
            "He deposited his paycheck and balanced his checkbook.",
            "She paid with a check for 40 dollars.",
            "The total is 3 + 4 = 7.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
        ),
    },
    "backtracking": {
        "match": (
            "Wait, I think I added wrong.",
            "Actually, the discount applies before tax.",
            "Let me redo this part with the right numbers.",
            "I made a mistake in the second step.",
            "That's wrong: 7 * 8 is 56, not 54.",
            "So she has 12 left. No, she gave away 3 more, so 9.",
            "Let me reconsider the rate.",
        ),
        "no_match": (
            "The waiter awaited the guests for 20 minutes.",
            "They had to wait 3 hours for the bus.",
            "There are no apples left, so the answer is 0.",
            "12 + 5 = 17, so the total is 17.",
            "Let's think step by step and provide your final answer inside \\boxed{} notation.",
        ),
    },
}

# ``recomputes``: "a (op) b = c", with the operators a model writes in plain text or LaTeX.
_ARITH = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s{0,2}(\+|-|\*|/|×|÷|x|\\times|\\cdot|\\div)\s{0,2}(\d+(?:\.\d+)?)\s{0,2}=\s{0,2}-?\d",
    re.IGNORECASE,
)
_OP = {"×": "*", "x": "*", "X": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/"}


def recomputes(text: str) -> bool:
    """Simple heuristic: does ``text`` re-compute an earlier quantity after a reflective cue?

    True when the same arithmetic expression with a result ("3 * 4 = 12", "12+5=17"; operands compared as written,
    ``+`` and ``*`` up to operand order, ``×``/``x``/``\\times``/``\\cdot`` read as ``*``) occurs twice and some
    :data:`PATTERNS` cue starts between the end of its first and the start of its last occurrence. The results need
    not agree -- redoing "3 * 4 = 13" as "3 * 4 = 12" counts. An expression written once, or repeated without a cue
    in between (e.g. a running total restated), does not count.
    """
    spans: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for m in _ARITH.finditer(text):
        a, op, b = m.group(1), _OP.get(m.group(2), m.group(2)), m.group(3)
        if op in "+*" and float(b) < float(a):
            a, b = b, a
        spans.setdefault((a, op, b), []).append((m.start(), m.end()))
    # for each repeated expression, the window [end of first occurrence, start of last] a cue must start in
    windows = sorted((occ[0][1], occ[-1][0]) for occ in spans.values() if len(occ) > 1)
    if not windows:
        return False
    starts = [w[0] for w in windows]
    reach = list(itertools.accumulate((w[1] for w in windows), max))  # furthest window end among those begun
    for pats in PATTERNS.values():
        for pattern in pats:
            for m in pattern.finditer(text):
                i = bisect.bisect_right(starts, m.start())
                if i and reach[i - 1] >= m.start():
                    return True
    return False


def detect(text: str) -> dict[str, bool]:
    """Which behaviours ``text`` shows: ``{behaviour: bool}`` for every name in :data:`BEHAVIOURS`.

    A behaviour is shown when any of its :data:`PATTERNS` matches; ``backtracking`` is also shown when
    :func:`recomputes` is true. Non-string input is treated as empty text.
    """
    if not isinstance(text, str):
        text = ""
    found = {name: any(p.search(text) for p in PATTERNS[name]) for name in BEHAVIOURS}
    if not found["backtracking"]:
        found["backtracking"] = recomputes(text)
    return found


def reflection_rates(texts: Iterable[str]) -> dict[str, float]:
    """Share of ``texts`` showing each behaviour, plus ``"any"`` (at least one behaviour); all 0.0 when empty."""
    counts = dict.fromkeys((*BEHAVIOURS, "any"), 0)
    n = 0
    for text in texts:
        n += 1
        found = detect(text)
        for name, hit in found.items():
            counts[name] += hit
        counts["any"] += any(found.values())
    return {name: (c / n if n else 0.0) for name, c in counts.items()}


def _records(path: str | Path) -> Iterator[dict]:
    for lineno, rec in iter_jsonl(path):
        if isinstance(rec, json.JSONDecodeError):
            raise ValueError(f"{path}:{lineno}: not a JSON line ({rec.msg})")
        if isinstance(rec, dict):
            yield rec


def _span(rec: dict) -> tuple[int, int] | None:
    span = rec.get("teacher_span")
    if isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span):
        return span[0], span[1]
    return None


def _guided(rec: dict) -> bool:
    """Whether the teacher changed this row (the trainer never writes ``guided`` with ``no_feedback``; a row that has
    both, written by hand, counts as unguided)."""
    return bool(rec.get("guided")) and not rec.get("no_feedback")


def own_sample(rec: dict) -> tuple[str, bool] | None:
    """The student's own, unaided sample in a rollout row and whether it ended before the length limit; None if the
    row holds no whole sample of the student's (a hint's continuation, an expert's solution, a refinement written with
    the critique in context).

    A spliced rollout keeps the student's whole finished sample before the teacher's span, so it counts: guidance picks
    only finished rollouts, and leaving the spliced ones out would bias the rest towards unfinished ones.
    """
    response = str(rec.get("response") or "")
    if not _guided(rec):
        return response, bool(rec.get("finished"))
    span = _span(rec)
    if span and span[0] > 0:
        return response[: span[0]], True
    return None


def _text(rec: dict, guided: bool | None, field: str) -> str | None:
    """The text of one rollout to run detection on, or None when it is filtered out or has no such text."""
    if guided is not None and _guided(rec) != guided:
        return None
    if field == "response":
        own = own_sample(rec)
        return own[0] if own else None
    if field == "teacher":
        span = _span(rec)
        return str(rec.get("response") or "")[span[0] : span[1]] if span else None
    value = rec.get(field)
    return value if isinstance(value, str) else None


def _selected(path: str | Path, guided: bool | None, field: str) -> Iterator[tuple[dict, str]]:
    for rec in _records(path):
        text = _text(rec, guided, field)
        if text is not None:
            yield rec, text


def rollout_rates(path: str | Path, *, guided: bool | None = None, field: str = "response") -> dict[str, float]:
    """:func:`reflection_rates` over the rollouts in a ``rollouts.jsonl``.

    ``guided``: None (default) keeps every row, True only rows the teacher changed, False only the others (a row whose
    teacher gave no feedback counts as unguided). ``field``: ``"response"`` runs detection on the student's own,
    unaided sample (:func:`own_sample`; rows without one are skipped), so the default answers "does the student
    reflect without the teacher?" over every sample it drew; ``"teacher"`` on the teacher's words
    ``response[start:end]`` of a ``teacher_span`` (rows without a span are skipped); any other name on that key's
    string value (e.g. ``"teacher_raw"``; rows without it are skipped). Blank lines are ignored; a malformed line
    raises ValueError naming it.
    """
    return reflection_rates(text for _, text in _selected(path, guided, field))


def rates_by_step(
    path: str | Path, *, guided: bool | None = None, field: str = "response"
) -> dict[int, dict[str, float]]:
    """:func:`rollout_rates` per training step (the rollouts' integer ``"step"`` key), in step order.

    Rollouts without an integer step are skipped; steps with no selected rollout are absent.
    """
    by_step: dict[int, list[str]] = {}
    for rec, text in _selected(path, guided, field):
        step = rec.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            by_step.setdefault(step, []).append(text)
    return {step: reflection_rates(by_step[step]) for step in sorted(by_step)}
