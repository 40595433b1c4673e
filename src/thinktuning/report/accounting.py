"""The teacher's accounting over a whole run: what guidance did, how often the teacher was right or made things worse,
and what it cost, totalled from the per-step lines of ``metrics.jsonl``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

ROWS: tuple[tuple[str, str], ...] = (
    ("guidance/guided", "rollouts guided"),
    ("guidance/no_feedback", "sent to the teacher, no usable feedback"),
    ("guidance/guided_correct", "guided rollouts that end correct"),
    ("guidance/wrong_to_right", "student wrong, guided right"),
    ("guidance/right_to_wrong", "student right, guided wrong (the teacher made it worse)"),
    ("guidance/answer_leaks", "teacher stated the reference answer it was not shown"),
    ("guidance/groups_rescued", "groups with no GRPO signal that guidance gave one"),
    ("teacher/requests", "HTTP requests (retries included)"),
    ("teacher/failed_requests", "HTTP requests failed for good"),
    ("teacher/tokens_in", "teacher prompt tokens"),
    ("teacher/tokens_out", "teacher tokens written"),
    ("teacher/usage_missing", "server answers without token usage"),
    ("teacher/cache_hits", "answers replayed from the cache"),
    ("teacher/cache_misses", "answers asked of the teacher"),
    ("teacher/ms", "time waiting for the teacher (s)"),
    ("teacher/cost", "cost (teacher.price_*_per_million)"),
)
"""(metric, label) in the order the report shows them."""


def totals(metrics: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Sum of each accounting metric over the steps that logged it (NaN and missing steps skipped); a metric no step
    logged is absent. ``teacher/ms`` is returned in seconds."""
    out: dict[str, float] = {}
    for line in metrics:
        for key, _ in ROWS:
            v = line.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[key] = out.get(key, 0) + v
    if "teacher/ms" in out:
        out["teacher/ms"] /= 1000.0
    return out


def rates(total: dict[str, float]) -> dict[str, float]:
    """Shares worth reading next to the counts, per guided rollout: how many end correct, how many leak the answer."""
    guided = total.get("guidance/guided", 0)
    out = {}
    if guided:
        if "guidance/guided_correct" in total:
            out["guided rollouts that end correct"] = total["guidance/guided_correct"] / guided
        if "guidance/answer_leaks" in total:
            out["answer leaks per guided rollout"] = total["guidance/answer_leaks"] / guided
    return out
