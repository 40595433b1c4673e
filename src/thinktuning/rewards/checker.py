"""The equivalence check: math-verify in a killable worker process, so no answer can stall a training step.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread, so :class:`AnswerChecker`
runs math-verify with its signal-based timeouts switched off inside a separate worker process, and enforces the
deadline from the outside: a worker that overruns is killed and replaced, and the item counts as wrong.

This module imports only the standard library at top level, so the worker process can load this very file by
path without importing the rest of the package (and torch with it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["AnswerChecker"]

log = logging.getLogger("thinktuning.rewards")  # the name users already filter on

_WARN_UNPARSED = 5  # warnings for references math-verify cannot parse; later ones are only counted

# The child loads this file by path (not ``import thinktuning.rewards.checker``): importing the package would
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
    Verdicts are cached per (prediction, reference), since a GRPO group repeats the same answers. Arithmetic
    left undone (``25 + 41`` for 66) is never an answer (:func:`~thinktuning.rewards.answers.is_unevaluated`).
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
        from thinktuning.rewards.answers import (  # here: the worker never needs them
            _normalise_reference,
            _same_text,
            is_unevaluated,
        )

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
            elif is_unevaluated(*key):  # math-verify would evaluate it, and pay for restating the question
                verdicts[i] = False
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
