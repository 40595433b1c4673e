"""Rule-based rewards: answer extraction, a math-equivalence checker that cannot hang, and TRL-style plumbing.

The reward is the only signal GRPO learns from, so three properties matter more than cleverness:

* extraction is predictable (the *last* ``\\boxed{}`` wins, nested braces are respected);
* equivalence is real maths (``\\frac{1}{2}`` equals ``0.5``), delegated to math-verify;
* a pathological answer (``9^{9^{9^{9}}}``) can never stall a training step. math-verify's own timeouts use
  ``signal.alarm``, which only works in the main thread, so :class:`AnswerChecker` runs math-verify with its
  signal-based timeouts switched off inside a separate worker process, and enforces the deadline from the
  outside: a worker that overruns is killed and replaced, and the item counts as wrong.

This module imports only the standard library at top level. That keeps it cheap to import and lets the
worker process load this very file without importing the rest of the package (and torch with it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AnswerChecker", "RewardFunctionError", "call_reward_functions", "completion_text", "compute_rewards",
    "correctness_reward", "extract_answer", "extract_boxed", "extract_last_number", "load_reward_function",
]

log = logging.getLogger(__name__)
_WARN_UNPARSED = 5  # warnings for references math-verify cannot parse; later ones are only counted

# --- Extraction (pure functions) -------------------------------------------------------------------------

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


# --- The checker: math-verify in a killable worker process -----------------------------------------------

# The child loads this file by path (not ``import thinktuning.rewards``): importing the package would
# import torch and the trainer, seconds of start-up for a process that only needs sympy.
_BOOT = (
    "import sys, importlib.util as u\n"
    "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
    "s = u.spec_from_file_location('_thinktuning_checker_worker', sys.argv[1])\n"
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
    "m._worker_main(int(sys.argv[2]))\n"
)


def _verify_pair(parse: Callable, verify: Callable, pred: str, ref: str) -> tuple[bool, bool]:
    """math-verify with signals off: (equivalent, whether the reference parsed as maths).

    The gold is parsed first, as math-verify's documentation asks. Both sides are wrapped in ``\\boxed{}``
    because that is the context math-verify's LaTeX extractor parses most reliably for bare answers such as
    ``\\frac12`` or ``p - q``. A reference it cannot parse comes back as its bare string only; math-verify then
    compares it as text, which is the fallback we count and report.
    """
    gold = parse("\\boxed{" + ref + "}", parsing_timeout=None)
    guess = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    parsed = any(not isinstance(g, str) for g in gold)
    return bool(verify(gold, guess, timeout_seconds=None)), parsed


def _worker_main(memory_limit_mb: int) -> None:
    """Worker loop: read one JSON batch per line on stdin, write one ``[index, verdict]`` line per item.

    stdout is reserved for the protocol (anything a library prints goes to stderr instead). A memory cap
    turns a runaway ``2^{2^{40}}`` into a MemoryError rather than a machine-wide OOM.
    """
    import signal

    # Ctrl-C in a terminal signals the whole process group: the trainer finishes its step on the first one,
    # and needs this worker alive to do so. The worker ends when the trainer closes its stdin or kills it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if memory_limit_mb > 0:
        try:
            import resource

            cap = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, ValueError, OSError):
            pass  # not POSIX, or the hard limit is lower already: the wall-clock timeout still applies
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "timeout disabled" warnings
    try:
        from math_verify import parse, verify
    except Exception as exc:
        proto.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        items = json.loads(line)
        for i, (pred, ref) in enumerate(items):
            parsed = True
            try:
                verdict, parsed = _verify_pair(parse, verify, pred, ref)
            except BaseException:  # MemoryError, RecursionError, sympy bugs: the item is wrong, go on
                verdict = None
            proto.write(json.dumps([i, verdict, parsed]) + "\n")


class _Worker:
    """One live worker process plus the thread that turns its stdout into a queue of replies."""

    def __init__(self, memory_limit_mb: int, startup_timeout_s: float) -> None:
        argv = [sys.executable, "-c", _BOOT, str(Path(__file__).resolve()), str(memory_limit_mb)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", bufsize=1)
        self.replies: queue.Queue[Any] = queue.Queue()
        reader = threading.Thread(target=self._read, args=(self.proc.stdout, self.replies), daemon=True)
        reader.start()
        try:
            hello = self.replies.get(timeout=startup_timeout_s)
        except queue.Empty:
            hello = {"error": f"no answer within {startup_timeout_s:.0f} s"}
        if not isinstance(hello, dict) or not hello.get("ready"):
            self.kill()
            why = hello.get("error") if isinstance(hello, dict) else "worker exited"
            raise RuntimeError(
                f"the math-verify worker process failed to start ({why}). "
                "Is math-verify installed in this environment? (pip install math-verify)"
            )

    @staticmethod
    def _read(stream: Any, replies: queue.Queue[Any]) -> None:
        with stream:  # closed here, by its only reader, once the worker has gone
            for line in stream:
                with contextlib.suppress(json.JSONDecodeError):
                    replies.put(json.loads(line))
        replies.put(None)  # end of stream: the worker died or was killed

    def send(self, items: list[tuple[str, str]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(items) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()


def _kill_worker(holder: dict[str, _Worker | None]) -> None:
    """Finalizer target (kept outside the class so it holds no reference to the checker)."""
    worker = holder.get("worker")
    holder["worker"] = None
    if worker is not None:
        worker.kill()


class AnswerChecker:
    """Checks predicted answers against references with math-verify, never hanging the caller.

    Each item gets ``timeout_s`` seconds in a worker process; an item that overruns is answered False,
    counted in :attr:`timeouts`, and the worker is killed and restarted (about half a second). The worker
    starts lazily on the first check that needs it. Safe to call from any thread (calls are serialised).
    Verdicts are cached per (prediction, reference), since a GRPO group repeats the same answers.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        *,
        memory_limit_mb: int = 4096,
        startup_timeout_s: float = 60.0,
        cache_size: int = 65536,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = int(memory_limit_mb)
        self.startup_timeout_s = float(startup_timeout_s)
        self.cache_size = int(cache_size)
        self.timeouts = 0
        self.errors = 0  # items on which math-verify itself crashed (counted as incorrect)
        self.unparsed_references: set[str] = set()
        """References math-verify could not parse as maths; they are compared as text (exact after spacing)."""
        self._cache: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._holder: dict[str, _Worker | None] = {"worker": None}
        self._finalizer = weakref.finalize(self, _kill_worker, self._holder)

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process. The checker stays usable: the next check starts a new one."""
        with self._lock:
            _kill_worker(self._holder)

    def check(self, pred: str | None, reference: str) -> bool:
        """True if ``pred`` is mathematically equivalent to ``reference``; None and timeouts are False."""
        return self.check_many([pred], [reference])[0]

    def check_many(self, preds: Sequence[str | None], references: Sequence[str]) -> list[bool]:
        """Batch form of :meth:`check`: one round-trip to the worker, still ``timeout_s`` per item."""
        if len(preds) != len(references):
            raise ValueError(f"{len(preds)} predictions but {len(references)} references")
        verdicts: list[bool | None] = [None] * len(preds)
        todo: list[tuple[int, tuple[str, str]]] = []
        for i, (pred, ref) in enumerate(zip(preds, references, strict=True)):
            if pred is None or not str(pred).strip():
                verdicts[i] = False
                continue
            key = (str(pred).strip(), _normalise_reference(ref))
            if _same_text(*key):
                verdicts[i] = True
            elif key in self._cache:
                verdicts[i] = self._cache[key]
            else:
                todo.append((i, key))
        if todo:
            with self._lock:
                results = self._run(list(dict.fromkeys(key for _, key in todo)))
            for i, key in todo:
                verdicts[i] = results[key]
        return [bool(v) for v in verdicts]

    def _worker(self) -> _Worker:
        worker = self._holder["worker"]
        if worker is None or worker.proc.poll() is not None:
            if worker is not None:
                worker.kill()
            worker = _Worker(self.memory_limit_mb, self.startup_timeout_s)
            self._holder["worker"] = worker
        return worker

    def _run(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """Feed ``keys`` to the worker; after a timeout or crash, a fresh worker gets the rest."""
        results: dict[tuple[str, str], bool] = {}
        while len(results) < len(keys):
            pending = keys[len(results) :]
            worker = self._worker()
            try:
                worker.send(pending)
            except OSError:  # it died since the last batch: one restart, then errors propagate
                _kill_worker(self._holder)
                worker = self._worker()
                worker.send(pending)
            for key in pending:
                try:
                    reply = worker.replies.get(timeout=self.timeout_s)
                except queue.Empty:
                    self.timeouts += 1
                    reply = None
                else:
                    self.errors += reply is None or reply[1] is None
                    if reply is not None and len(reply) > 2 and reply[2] is False:
                        self._note_unparsed(key[1])
                results[key] = bool(reply and reply[1])
                self._remember(key, results[key])
                if reply is None:  # overran or died: kill it, the loop restarts one for the rest
                    _kill_worker(self._holder)
                    break
        return results

    def _note_unparsed(self, reference: str) -> None:
        if reference in self.unparsed_references:
            return
        self.unparsed_references.add(reference)
        n = len(self.unparsed_references)
        if n <= _WARN_UNPARSED:
            log.warning(
                "math-verify cannot parse the reference answer %r; it is compared as text only (counted in "
                "reward/unparsed_references%s)", reference[:200],
                "; further ones are counted without a warning" if n == _WARN_UNPARSED else "",
            )

    def _remember(self, key: tuple[str, str], verdict: bool) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # crude but bounded; a step's answers refill it at once
        self._cache[key] = verdict


_DEFAULT_CHECKER: AnswerChecker | None = None
_DEFAULT_LOCK = threading.Lock()


def _default_checker() -> AnswerChecker:
    """A process-wide checker, so plain TRL-style calls don't start a worker per call."""
    global _DEFAULT_CHECKER
    with _DEFAULT_LOCK:
        if _DEFAULT_CHECKER is None:
            _DEFAULT_CHECKER = AnswerChecker()
        return _DEFAULT_CHECKER


# --- Reward functions (TRL signature) and how to combine them --------------------------------------------


def completion_text(completion: Any) -> str:
    """Text of one completion: TRL passes plain strings, or message lists for conversational data."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    return ""


def correctness_reward(
    prompts: list,
    completions: list[str],
    reference: list[str],
    truncated: list[bool] | None = None,
    *,
    answer_fallback: str = "none",
    zero_if_truncated: bool = True,
    checker: AnswerChecker | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 if a completion's final answer equals the reference, else 0.0 (the paper's only reward).

    ``zero_if_truncated`` follows the recipe: a response that hit the length limit gets 0 even if an
    answer can be found in it, so the policy is not paid for rambling. Extra dataset columns arrive in
    ``kwargs`` (TRL convention) and are ignored.
    """
    n = len(completions)
    if len(reference) != n:
        raise ValueError(f"correctness_reward: {n} completions but {len(reference)} references")
    if truncated is not None and len(truncated) != n:
        raise ValueError(f"correctness_reward: {n} completions but {len(truncated)} truncated flags")
    cut = [bool(t) for t in truncated] if truncated is not None else [False] * n
    preds = [
        None if (zero_if_truncated and cut[i]) else extract_answer(completion_text(c), answer_fallback)
        for i, c in enumerate(completions)
    ]
    checker = checker if checker is not None else _default_checker()
    verdicts = checker.check_many(preds, [str(r) for r in reference])
    return [1.0 if ok else 0.0 for ok in verdicts]


class RewardFunctionError(ValueError):
    """A user reward function (``reward.functions``) that cannot be imported or is not callable."""


def load_reward_function(path: str) -> Callable:
    """Import a user reward function from ``"pkg.module:func"``, ``"pkg.module.func"`` or ``"file.py:func"``.

    This is how users bring their own rewards from a config file, so every failure says which part of the
    path was wrong.
    """
    shape = "must look like 'pkg.module:func', 'pkg.module.func' or 'path/to/file.py:func'"
    path = path.strip() if isinstance(path, str) else ""
    module_name, sep, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(f"reward function path {path!r} {shape}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).expanduser()
            if not file.is_file():
                raise RewardFunctionError(f"reward function file {str(file)!r} does not exist (from {path!r})")
            spec = importlib.util.spec_from_file_location(file.stem, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardFunctionError(
            f"cannot import module {module_name!r} for reward function {path!r}: {exc}. "
            "Is it installed or on PYTHONPATH?"
        ) from exc
    func = getattr(module, attr, None)
    if func is None:
        raise RewardFunctionError(f"module {module_name!r} has no attribute {attr!r} (reward function {path!r})")
    if not callable(func):
        raise RewardFunctionError(f"{path!r} is a {type(func).__name__}, not a callable reward function")
    return func


def _func_name(func: Callable) -> str:
    inner = getattr(func, "func", func)  # functools.partial: name the wrapped function
    return getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or repr(func)


def call_reward_functions(
    funcs: Sequence[Callable], prompts: list, completions: list, columns: dict[str, list]
) -> list[list[float | None]]:
    """Each function's raw outputs (one list per function), validated; None/NaN mean "not applicable".

    Separate from :func:`compute_rewards` so the trainer can log every reward component.
    """
    n = len(completions)
    table: list[list[float | None]] = []
    for func in funcs:
        name = _func_name(func)
        try:
            out = func(prompts=prompts, completions=completions, **columns)
        except Exception as exc:
            raise RuntimeError(f"reward function {name} raised {type(exc).__name__}: {exc}") from exc
        try:
            values = list(out)
        except TypeError as exc:
            raise RuntimeError(f"reward function {name} returned {type(out).__name__}, not a list") from exc
        if len(values) != n:
            raise RuntimeError(f"reward function {name} returned {len(values)} values for {n} completions")
        row: list[float | None] = []
        for v in values:
            if v is None:
                row.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError) as exc:
                raise RuntimeError(f"reward function {name} returned a non-number: {v!r}") from exc
            row.append(None if math.isnan(f) else f)
        table.append(row)
    return table


def compute_rewards(
    funcs: Sequence[Callable],
    prompts: list,
    completions: list[str],
    columns: dict[str, list],
    weights: Sequence[float] | None = None,
) -> list[float]:
    """Weighted sum of reward functions per completion (TRL semantics: None contributes 0)."""
    if weights is None:
        weights = [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} reward weights for {len(funcs)} reward functions")
    table = call_reward_functions(funcs, prompts, completions, columns)
    totals = [0.0] * len(completions)
    for w, row in zip(weights, table, strict=True):
        for i, v in enumerate(row):
            if v is not None:
                totals[i] += float(w) * v
    return totals
