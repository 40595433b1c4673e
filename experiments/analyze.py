"""Read the evidence experiment's committed pieces and write its tables, curves and quotes.

    .venv/bin/python experiments/analyze.py            # -> experiments/results/SUMMARY.md and experiments/figures/

Everything is computed from what ``experiments/evidence.py`` committed (eval files with every response, metrics and
rollouts), so it runs on any clone, and the pieces finished so far always give a table. Per response, both scoring
rules are applied here (the paper's: the last ``\\boxed{}`` answer; the lenient one: else the last number), plus
the boxed rate, the answer-loop rate (:func:`thinktuning.eval.metrics.repeats`), reflection cues, what a second
answer did to the first, and wrong boxes copied from the question. The tables are drawn by
``evidence_tables.py``, the figures by ``evidence_plots.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from evidence_plots import plot_accuracy, plot_curves
from evidence_tables import (
    BASELINE,
    FAMILY,
    REFERENCE,
    VARIANTS,
    arm_table,
    decoding_table,
    fair_baseline,
    ordered,
    quotes,
    rate,
    same_seed_table,
    seed_checks,
    seed_table,
    window_table,
)
from format_reward import question_numbers

from thinktuning.eval.compare import compare_table
from thinktuning.eval.metrics import answer_change, repeats, same_answer
from thinktuning.eval.reflection import detect, own_sample
from thinktuning.rewards.answers import boxed_answers, extract_answer

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh) if path.name.endswith(".json.gz") else [json.loads(line) for line in fh if line.strip()]


def pieces(results: Path) -> list[dict]:
    out = []
    for info_path in sorted(results.glob("*/*/seed*/piece.json")):
        info = json.loads(info_path.read_text())
        info["dir"] = info_path.parent
        out.append(info)
    return out


def shared_zero_shot(piece: dict, rule: str, found: list[dict]) -> bool:
    """The untrained model's piece stands in for a rule that has none of its own: the rule is a training setting,
    and both rules are scored here from the same responses (``lenient/zero-shot/0`` would repeat them)."""
    return piece["arm"] == "zero-shot" and not any(p["arm"] == "zero-shot" and p["rule"] == rule for p in found)


def score(text: str, reference: str, truncated: bool, rule: str) -> float:
    ans = extract_answer(text, "none" if rule == "paper" else "last_number")
    return float(not truncated and ans is not None and same_answer(ans, reference))


def copied_from_question(boxes: list[str], question: str, reference: str) -> bool:
    """The first boxed answer is wrong and is a number the question itself states: boxing without working (the
    format baseline's bonus pays for any boxed number)."""
    if not boxes or same_answer(boxes[0], reference):
        return False
    return any(same_answer(boxes[0], n) for n in question_numbers(question))


def item_table(ev: dict) -> dict[str, dict]:
    """Per item id: both rules' scores (mean over samples), and per-response behaviour flags."""
    out = {}
    for item in ev["benchmarks"]["arithmetic"]["items"]:
        rows = []
        for s in item["samples"]:
            text, trunc = s["response"], s["truncated"]
            boxes = boxed_answers(text)
            rows.append({"paper": score(text, item["reference"], trunc, "paper"),
                         "lenient": score(text, item["reference"], trunc, "lenient"),
                         "boxed": float(bool(boxes)), "tokens": s["tokens"],
                         "loop": float(repeats(text)), "reflect": float(any(detect(text).values())),
                         "first_right": float(bool(boxes) and same_answer(boxes[0], item["reference"])),
                         "copied": float(copied_from_question(boxes, item["question"], item["reference"])),
                         "change": answer_change(boxes, item["reference"]) if len(boxes) > 1 else None})
        out[str(item["id"])] = rows
    return out


def summarise(table: dict[str, dict]) -> dict[str, float]:
    flat = [r for rows in table.values() for r in rows]
    m = {k: rate(flat, k) for k in ("paper", "lenient", "boxed", "tokens", "loop", "reflect", "copied")}
    changes = [r["change"] for r in flat if r["change"]]
    for kind in ("wrong->right", "right->wrong", "wrong->wrong", "kept"):
        m[f"second answer {kind}"] = sum(c == kind for c in changes) / len(flat)
    m["pass@4 " + "paper"] = sum(any(r["paper"] for r in rows) for rows in table.values()) / len(table)
    m["pass@4 " + "lenient"] = sum(any(r["lenient"] for r in rows) for rows in table.values()) / len(table)
    return m


def read_piece(info: dict) -> None:
    """Add a piece's per-item tables, their summaries and its training curves to ``info``."""
    d = info["dir"]
    info["items"] = item_table(load(d / "eval-greedy.json.gz"))
    info["greedy"] = summarise(info["items"])
    if (d / "eval-pass4.json.gz").is_file():
        info["pass4_items"] = item_table(load(d / "eval-pass4.json.gz"))
        info["pass4"] = summarise(info["pass4_items"])
    if (d / "rollouts.jsonl.gz").is_file():
        info["rollouts"] = load(d / "rollouts.jsonl.gz")
        info["curves"] = curves(info["rollouts"])


def curves(rollouts: list[dict]) -> dict[str, list[float]]:
    """Per step, over the student's own samples (:func:`own_sample`): correct, boxed, reflection, loop, ended rates."""
    steps: dict[int, list[tuple[dict, str, bool]]] = defaultdict(list)
    for r in rollouts:
        own = own_sample(r)
        if own is not None:
            steps[r["step"]].append((r, *own))
    out: dict[str, list[float]] = {"step": [], "reward": [], "boxed": [], "reflect": [], "loop": [], "ended": []}
    for step in sorted(steps):
        rs = steps[step]
        out["step"].append(step)
        out["reward"].append(sum(r["student_correct"] for r, _, _ in rs) / len(rs))
        out["boxed"].append(sum(bool(boxed_answers(text)) for _, text, _ in rs) / len(rs))
        out["reflect"].append(sum(any(detect(text).values()) for _, text, _ in rs) / len(rs))
        out["loop"].append(sum(repeats(text) for _, text, _ in rs) / len(rs))
        out["ended"].append(sum(ended for _, _, ended in rs) / len(rs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--figures", default=str(ROOT / "experiments" / "figures"))
    ap.add_argument("--output", default=None, help="default: RESULTS/SUMMARY.md")
    args = ap.parse_args(argv)
    results, figures = Path(args.results), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    found = pieces(results)
    for info in found:  # once each: the zero-shot piece serves both rules
        read_piece(info)
    doc = ["# Evidence experiment: generated summary", "",
           f"Generated by `experiments/analyze.py` from {len(found)} committed piece(s) under `{results.name}/`.", ""]
    for rule in ("paper", "lenient"):
        by_arm: dict[str, list[dict]] = defaultdict(list)
        labels = {}
        for info in (p for p in found if p["rule"] == rule or shared_zero_shot(p, rule, found)):
            by_arm[info["arm"]].append(info)
            labels[info["arm"]] = info["label"]
        if set(by_arm) <= {"zero-shot"}:
            continue
        fallback = "none: only a \\boxed{} answer scores" if rule == "paper" else "last_number"
        doc += [f"## {rule} rule (training reward: reward.answer_fallback={fallback})",
                "", *arm_table(rule, by_arm, labels), ""]
        doc += ["Cells: mean over seeds ± half-width of the 95% t-interval (one seed: no interval). Δ: paired "
                "bootstrap over the 300 items and the seeds; `*`: the interval excludes 0.", ""]
        doc += [f"### Each seed ({rule} rule)", "", *seed_table(by_arm, labels, rule), ""]
        checks = seed_checks(by_arm, labels, rule)
        if checks:
            doc += [f"### Seed-level check against {fair_baseline(rule)} ({rule} rule)", "", *checks, "",
                    "Only the seed means, no items: a Welch t-interval (degrees of freedom rounded down) and an "
                    "exact two-sided permutation test. Its smallest possible p is 0.10 with 3 + 3 seeds, 0.029 with "
                    "4 + 4 and 0.008 with 5 + 5; with unequal groups it can reach 1 / C(n, k) (0.029 for 3 + 4).", ""]
        decoding = decoding_table(by_arm, labels, rule)
        if len(decoding) > 2:
            doc += [f"### Greedy against sampled decoding, same 100 items ({rule} rule)", "", *decoding, "",
                    "One sample at T=1: the mean accuracy of the four sampled answers per item (avg@4). Loops: "
                    "answers that repeat a sentence to the token limit; the last column counts greedy answers that "
                    "loop after a first boxed answer that was right (truncated answers score 0 under both rules).",
                    ""]
        windows = window_table(by_arm, labels)
        if windows:
            doc += [f"### Internalisation: the student's own training samples by 10-step window ({rule} "
                    "rule)", "", *windows, "",
                    "Own samples: the unguided rollouts and the student's part of each spliced one. The hint, expert "
                    "and refine arms' guided rollouts hold no whole sample of the student's, so those arms' rates "
                    "come from the unguided rest, which leans towards unfinished samples (only finished ones are "
                    "guided). Correct: under the training rule. Mean over seeds of each seed's window rate.", ""]
        for group, title in ((VARIANTS, "ThinkTuning's variants"), (FAMILY, "The guidance family")):
            table = same_seed_table(by_arm, labels, group, rule)
            if table:
                doc += [f"### {title} against ThinkTuning on the same seeds ({rule} rule)", "", *table, "",
                        "Δ: paired bootstrap over the 300 items and the seeds both arms have; `*`: the interval "
                        f"excludes 0. The {REFERENCE} row is restricted to those seeds.", ""]
        with tempfile.TemporaryDirectory() as tmp:
            args_cmp = []
            for arm, ps in by_arm.items():
                for p in ps:
                    f = Path(tmp) / f"{arm}-{p['seed']}.json"
                    f.write_text(json.dumps(load(p["dir"] / "eval-greedy.json.gz")))
                    args_cmp.append(f"{arm}={f}")
            order = sorted(args_cmp, key=lambda a: (not a.startswith(BASELINE + "="), a))
            table = compare_table(order).split("\n", 2)[2]
        doc += [f"### `thinktuning compare` of the greedy eval files ({rule} rule)", "", table, ""]
        arms = ordered(by_arm)
        main = [a for a in arms if a not in FAMILY]
        family = [a for a in arms if a in FAMILY or a == REFERENCE] if set(FAMILY) & set(arms) else []
        for path in (plot_accuracy(rule, arms, by_arm, labels, figures),
                     plot_curves(rule, main, by_arm, labels, figures),
                     plot_curves(rule, family, by_arm, labels, figures, name="curves-family")):
            if path is not None:
                doc += [f"![{path.stem}](../figures/{path.name})", ""]
        doc += ["### Guided rollouts as the student saw them (teacher's words between ⟦ ⟧)", "",
                *quotes(by_arm, labels), ""]
        walls = [(p["piece"], p.get("wall_s", {}), p.get("commit", "")[:7], p.get("cpu_capability")) for ps in
                 by_arm.values() for p in ps]
        doc += ["### Pieces", "", "| piece | commit | CPU | wall time (min) |", "|---|---|---|---|"]
        doc += [f"| {n} | {c} | {cpu} | " + ", ".join(f"{k} {v / 60:.0f}" for k, v in w.items()) + " |"
                for n, w, c, cpu in walls]
        doc.append("")
    out = Path(args.output) if args.output else results / "SUMMARY.md"
    out.write_text("\n".join(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
