"""What the skeptic's format bonus paid for during training: boxed numbers the question states, or new ones.

    .venv/bin/python experiments/format_bonus.py            # every committed grpo-format piece, paper rule

Reads each piece's ``rollouts.jsonl.gz`` and scores the student's own samples (:func:`own_sample`) again with
``format_reward.py``: the constant bonus (:func:`boxed_number`), and :func:`boxed_new_number`, which refuses a
number the question states.
Prints, per 10-step window over all seeds, the share of samples each bonus paid, and the share right.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from analyze import load
from format_reward import boxed_new_number, boxed_number

from thinktuning.eval.reflection import own_sample

ROOT = Path(__file__).resolve().parents[1]


def windows(rows: list[dict], width: int = 10) -> dict[int, dict[str, float]]:
    """Per window (first step of it): samples, and the shares paid by each bonus, copied and right."""
    by: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by[(int(r["step"]) - 1) // width * width + 1].append(r)
    out = {}
    for start, rs in sorted(by.items()):
        texts, questions = [r["response"] for r in rs], [r["question"] for r in rs]
        paid = [b > 0 for b in boxed_number(questions, texts)]
        new = [b > 0 for b in boxed_new_number(questions, texts, question=questions)]
        copied = sum(p and not n for p, n in zip(paid, new, strict=True))
        out[start] = {"samples": len(rs), "paid": sum(paid) / len(rs),
                      "paid, number from the question": copied / len(rs),
                      "paid under boxed_new_number": sum(new) / len(rs),
                      "right": sum(float(r["student_correct"]) > 0 for r in rs) / len(rs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="grpo-format")
    ap.add_argument("--rule", default="paper")
    args = ap.parse_args(argv)
    paths = sorted((ROOT / "experiments" / "results" / args.rule / args.arm).glob("seed*/rollouts.jsonl.gz"))
    if not paths:
        raise SystemExit(f"no committed rollouts under experiments/results/{args.rule}/{args.arm}/")
    rows = [{**r, "response": own[0]} for p in paths for r in load(p) if (own := own_sample(r)) is not None]
    print(f"{args.rule}/{args.arm}: {len(paths)} seeds, {len(rows)} samples")
    table = windows(rows)
    keys = list(next(iter(table.values())))
    print("| steps | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for start, m in table.items():
        cells = [f"{m['samples']:.0f}"] + [f"{100 * m[k]:.1f}%" for k in keys[1:]]
        print(f"| {start}–{start + 9} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
