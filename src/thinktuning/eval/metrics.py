"""Evaluation metrics as small pure functions: pass@k (unbiased), maj@k, avg@k, and their means over items.

Why the unbiased estimator: drawing k of the n samples and asking "is any correct?" is what pass@k means; with
n > k samples per problem, ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021) is its unbiased estimate, whereas
"c > 0 among the first k" throws samples away and is noisier. It is computed as a running product, which stays
exact-ish in floating point where the binomials themselves would overflow (n = 1,000).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["answer_change", "avg_at_k", "k_values", "maj_at_k", "mean", "pass_at_k", "repeats", "same_answer"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct: 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def avg_at_k(verdicts: Sequence[bool]) -> float:
    """Mean correctness over one problem's samples (avg@k; with k = 1 and greedy decoding, accuracy)."""
    if not verdicts:
        raise ValueError("avg@k of no samples")
    return sum(bool(v) for v in verdicts) / len(verdicts)


def maj_at_k(answers: Sequence[str | None], verdicts: Sequence[bool], k: int | None = None) -> bool:
    """Majority vote over the first ``k`` samples (all by default): is the most frequent extracted answer correct?

    Answers are grouped by their text with whitespace removed (``"1 / 2"`` and ``"1/2"`` vote together; ``0.5``
    and ``\\frac12`` do not -- the checker's equivalence is not transitive enough to cluster on). Samples without an
    answer do not vote; a tie goes to the answer seen first, so the result is deterministic. No answer at all: wrong.
    """
    if len(answers) != len(verdicts):
        raise ValueError(f"{len(answers)} answers but {len(verdicts)} verdicts")
    k = len(answers) if k is None else k
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)}, got k={k}")
    counts: dict[str, int] = {}
    verdict_of: dict[str, bool] = {}
    for answer, verdict in zip(answers[:k], verdicts[:k], strict=True):
        if answer is None or not str(answer).strip():
            continue
        key = "".join(str(answer).split())
        counts[key] = counts.get(key, 0) + 1
        verdict_of.setdefault(key, bool(verdict))
    if not counts:
        return False
    best = max(counts.values())
    winner = next(key for key, c in counts.items() if c == best)  # dicts keep first-seen order
    return verdict_of[winner]


def k_values(n: int) -> list[int]:
    """The k to report pass@k for with n samples: powers of two below n, and n itself (1, 2, 4, ..., n)."""
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    ks = []
    k = 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values (a benchmark with no items never reaches here, loading refuses it)."""
    return sum(values) / len(values) if values else 0.0


_SENTENCE = re.compile(r"[^.!?\n]+[.!?\n]?")


def repeats(text: str, times: int = 3, min_words: int = 4) -> bool:
    """Whether a sentence of at least ``min_words`` words occurs ``times`` times or more: the loop a response falls
    into when it does not stop after its answer ("The final answer is \\boxed{7}." until the token limit)."""
    counts: dict[str, int] = {}
    for m in _SENTENCE.finditer(text):
        sentence = " ".join(m.group(0).split()).strip(" .!?").lower()
        if len(sentence.split()) >= min_words:
            counts[sentence] = counts.get(sentence, 0) + 1
            if counts[sentence] >= times:
                return True
    return False


def same_answer(a: str, b: str) -> bool:
    """Numbers compared as numbers (``1,000`` is ``1000``), anything else as text without whitespace."""
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return "".join(a.split()) == "".join(b.split())


def answer_change(answers: Sequence[str], reference: str) -> str | None:
    """What a response's later answers did to its first: ``"wrong->right"``, ``"right->wrong"``, ``"wrong->wrong"``
    (a different wrong answer), or ``"kept"``; None when it gave fewer than one answer. Judged by the last answer
    against the first, with numbers compared as numbers."""
    if not answers:
        return None
    first, last = answers[0], answers[-1]
    if same_answer(first, last):
        return "kept"
    first_ok, last_ok = same_answer(first, reference), same_answer(last, reference)
    if last_ok and not first_ok:
        return "wrong->right"
    if first_ok and not last_ok:
        return "right->wrong"
    return "wrong->wrong"
