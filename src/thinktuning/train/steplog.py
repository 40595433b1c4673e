"""What a step logs: the metrics line of metrics.jsonl and one rollouts.jsonl record per rollout.

Pure functions of the step's rollouts (all processes' rollouts, gathered, when several train together), kept out
of the trainer so that it only wires the steps together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from thinktuning.config.schema import TeacherConfig
from thinktuning.rollout.types import Trajectory


def step_metrics(
    step: int, seqs: list[Trajectory], p: float, upd: dict[str, float], *, lr: float, checker_timeouts: int,
    unparsed_references: int,
) -> dict[str, Any]:
    """The metrics line of step ``step`` (0-based; logged 1-based). ``upd`` holds the update's metrics (its
    ``loss`` and ``grad_norm`` are taken out; the rest are logged as ``loss/<name>``)."""
    upd = dict(upd)
    rewards = torch.tensor([s.reward for s in seqs])
    guided = [s for s in seqs if s.guided]
    unguided = [s for s in seqs if not s.guided]
    resp_tokens = sum(len(s.response_ids) for s in seqs)
    teacher_tokens = sum(sum(s.teacher_mask) for s in seqs)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "step": step + 1,
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if len(seqs) > 1 else 0.0,
        "accuracy": mean([s.student_correct for s in seqs]),
        "guidance/p": p,
        "guidance/fraction": len(guided) / len(seqs),
        "guidance/guided": len(guided),
        "guidance/no_feedback": sum(s.no_feedback for s in seqs),
        "guidance/teacher_token_fraction": teacher_tokens / max(resp_tokens, 1),
        "guidance/reward_guided": mean([s.reward for s in guided]),
        "guidance/groups_rescued": groups_rescued(seqs),
        **teacher_accounting(guided),
        "guidance/reward_unguided": mean([s.reward for s in unguided]),
        "loss": upd.pop("loss"),
        "loss/shaped_weight_mean": upd.get("shaped_weight_mean", 0.0),
        "clip_fraction": upd.get("clip_fraction", 0.0),
        "grad_norm": upd.pop("grad_norm"),
        "lr": lr,
        "response_length/mean": resp_tokens / len(seqs),
        "truncated_fraction": mean([0.0 if s.finished else 1.0 for s in seqs]),
        "reward/checker_timeouts": checker_timeouts,
        "reward/unparsed_references": unparsed_references,
        **{f"loss/{k}": v for k, v in upd.items()},
    }


def teacher_accounting(guided: list[Trajectory]) -> dict[str, float]:
    """What the teacher did to the rollouts it guided: how many end correct, how many it turned from right to wrong
    (the teacher made it worse) or from wrong to right, and how often it stated the answer it was not shown."""
    final = [(s.student_correct > 0, (s.final_correct or 0.0) > 0) for s in guided]
    return {
        "guidance/guided_correct": sum(after for _, after in final),
        "guidance/right_to_wrong": sum(before and not after for before, after in final),
        "guidance/wrong_to_right": sum(after and not before for before, after in final),
        "guidance/answer_leaks": sum(s.answer_leak for s in guided),
    }


def groups_rescued(seqs: list[Trajectory]) -> int:
    """Groups with no learning signal of their own (every rollout's own correctness the same, so every GRPO
    advantage 0) whose final rewards differ after guidance: the signal guidance created."""
    groups: dict[int, list[Trajectory]] = {}
    for s in seqs:
        groups.setdefault(s.group, []).append(s)
    return sum(len({s.student_correct for s in g}) == 1 and len({s.reward for s in g}) > 1 for g in groups.values())


class CounterDeltas:
    """Per-step increments of running totals that a backend keeps (the HTTP teacher's ``stats``: requests,
    retries, failed requests), logged as ``<prefix><name>``. Increments, not totals, so that each metrics line
    says what happened during its step, and a resumed run (whose backend starts counting at 0) logs the same."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.last: dict[str, int] = {}

    def __call__(self, totals: dict[str, int] | None) -> dict[str, int]:
        if not totals:
            return {}
        out = {f"{self.prefix}{k}": v - self.last.get(k, 0) for k, v in totals.items()}
        self.last = dict(totals)
        return out


def teacher_cost(counts: dict[str, int], teacher: TeacherConfig) -> dict[str, float]:
    """``{"teacher/cost": ...}`` for one step's token counts (``teacher/tokens_in``, ``teacher/tokens_out``) at the
    config's prices per million tokens; empty when no price is set. A price left unset counts as 0."""
    price_in, price_out = teacher.price_in_per_million, teacher.price_out_per_million
    if price_in is None and price_out is None:
        return {}
    return {"teacher/cost": (counts.get("teacher/tokens_in", 0) * (price_in or 0.0)
                             + counts.get("teacher/tokens_out", 0) * (price_out or 0.0)) / 1e6}


def rollout_record(step: int, index: int, s: Trajectory) -> dict[str, Any]:
    """One line of rollouts.jsonl (``step`` 1-based, ``index`` the rollout's place in the step's batch)."""
    return {
        "step": step, "group": s.group, "index": index, "example_id": s.example.id,
        "question": s.example.question, "reference": s.example.reference, "response": s.text,
        "guided": s.guided, "teacher_span": list(s.teacher_span) if s.teacher_span else None,
        "opinion": s.opinion, "no_feedback": s.no_feedback, "teacher_raw": s.teacher_raw,
        "teacher_error": s.teacher_error,
        "finished": s.finished, "student_correct": s.student_correct, "final_correct": s.final_correct,
        "answer_leak": s.answer_leak, "reward": s.reward,
        "advantage": s.advantage, "response_tokens": len(s.response_ids),
    }


class StepTimer:
    """``with timer("update"): ...`` adds the block's wall time to ``time/update``; :meth:`metrics` returns every
    phase and ``time/step``, the time since the timer was made."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.start = clock()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + self.clock() - t0

    def metrics(self) -> dict[str, float]:
        return {**{f"time/{k}": v for k, v in self.phases.items()}, "time/step": self.clock() - self.start}
