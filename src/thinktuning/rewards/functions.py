"""Rule-based rewards with TRL's reward-function signature, and how several of them combine.

The reward is the only signal GRPO learns from, so three properties matter more than cleverness:

* extraction is predictable (:mod:`thinktuning.rewards.answers`: the *last* ``\\boxed{}`` wins, nested braces are
  respected);
* equivalence is real maths (``\\frac{1}{2}`` equals ``0.5``), delegated to math-verify;
* a pathological answer (``9^{9^{9^{9}}}``) can never stall a training step (:mod:`thinktuning.rewards.checker` runs
  math-verify in a worker process it can kill).

The names those modules define are re-exported here, where reward code has always imported them from.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thinktuning.errors import RewardFunctionError
from thinktuning.rewards.answers import extract_answer, extract_boxed, extract_last_number
from thinktuning.rewards.checker import AnswerChecker, _default_checker

__all__ = [
    "AnswerChecker", "call_reward_functions", "completion_text", "compute_rewards",
    "correctness_reward", "extract_answer", "extract_boxed", "extract_last_number", "load_reward_function",
]

log = logging.getLogger(__name__)


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
    funcs: Sequence[Callable], prompts: list, completions: list, columns: dict[str, list],
    trainer_state: Any = None,
) -> list[list[float | None]]:
    """Each function's raw outputs (one list per function), validated; None/NaN mean "not applicable".

    ``trainer_state``, when given, reaches every function as the keyword ``trainer_state`` (TRL's convention: a
    ``transformers.TrainerState``), so a reward can depend on training progress (``global_step``, ``max_steps``).
    Separate from :func:`compute_rewards` so the trainer can log every reward component.
    """
    n = len(completions)
    state = {} if trainer_state is None else {"trainer_state": trainer_state}
    table: list[list[float | None]] = []
    for func in funcs:
        name = _func_name(func)
        try:
            out = func(prompts=prompts, completions=completions, **columns, **state)
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
    trainer_state: Any = None,
) -> list[float]:
    """Weighted sum of reward functions per completion (TRL semantics: None contributes 0)."""
    if weights is None:
        weights = [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} reward weights for {len(funcs)} reward functions")
    table = call_reward_functions(funcs, prompts, completions, columns, trainer_state)
    totals = [0.0] * len(completions)
    for w, row in zip(weights, table, strict=True):
        for i, v in enumerate(row):
            if v is not None:
                totals[i] += float(w) * v
    return totals
