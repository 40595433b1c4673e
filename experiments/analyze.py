"""Read the evidence experiment's committed pieces and write its tables, curves and quotes.

    .venv/bin/python experiments/analyze.py            # -> experiments/results/SUMMARY.md and experiments/figures/

Everything is computed from what ``experiments/evidence.py`` committed (eval files with every response, metrics and
rollouts), so it runs on any clone, and the pieces finished so far always give a table. Per response, both scoring
rules are applied here (the paper's: the last ``\\boxed{}`` answer; the lenient one: else the last number), plus
the boxed rate, the answer-loop rate (:func:`thinktuning.eval.metrics.repeats`), reflection cues and what a second
answer did to the first.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path

from evidence_plots import plot_accuracy, plot_curves

from thinktuning.eval.compare import compare_table
from thinktuning.eval.metrics import answer_change, repeats, same_answer
from thinktuning.eval.reflection import detect, own_sample
from thinktuning.eval.stats import mean_ci, paired_bootstrap, permutation_p, significant, welch_interval
from thinktuning.rewards.answers import boxed_answers, extract_answer

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "grpo"
FORMAT_BASELINE = "grpo-format"
"""GRPO with a reward for a boxed number: the baseline that also gets a format signal (fair on the paper rule)."""


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


def score(text: str, reference: str, truncated: bool, rule: str) -> float:
    ans = extract_answer(text, "none" if rule == "paper" else "last_number")
    return float(not truncated and ans is not None and same_answer(ans, reference))


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
                         "change": answer_change(boxes, item["reference"]) if len(boxes) > 1 else None})
        out[str(item["id"])] = rows
    return out


def summarise(table: dict[str, dict]) -> dict[str, float]:
    flat = [r for rows in table.values() for r in rows]
    m = {k: sum(r[k] for r in flat) / len(flat) for k in ("paper", "lenient", "boxed", "tokens", "loop", "reflect")}
    changes = [r["change"] for r in flat if r["change"]]
    for kind in ("wrong->right", "right->wrong", "wrong->wrong", "kept"):
        m[f"second answer {kind}"] = sum(c == kind for c in changes) / len(flat)
    m["pass@4 " + "paper"] = sum(any(r["paper"] for r in rows) for rows in table.values()) / len(table)
    m["pass@4 " + "lenient"] = sum(any(r["lenient"] for r in rows) for rows in table.values()) / len(table)
    return m


GREEDY_KEYS = [("paper", "accuracy, paper rule (boxed)"), ("lenient", "accuracy, lenient rule (last number)"),
               ("boxed", "boxed rate"), ("tokens", "mean response tokens"), ("loop", "answer-loop rate"),
               ("reflect", "any reflection cue"), ("second answer wrong->right", "2nd answer fixed a wrong 1st"),
               ("second answer right->wrong", "2nd answer broke a right 1st")]


def md_head(head: list[str]) -> list[str]:
    return [md_row(head), "|" + "---|" * len(head)]


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def fmt(values: list[float]) -> str:
    m, _lo, hi = mean_ci(values)
    if math.isnan(m):
        return "–"
    spec = ".1f" if abs(m) >= 10 else ".3f"
    return f"{m:{spec}}" if len(values) == 1 else f"{m:{spec}} ± {hi - m:{spec}}"


ORDER = ("zero-shot", "grpo", "grpo-format", "tt-scripted-const", "tt-scripted-paper", "tt-scripted-const-luffy",
         "tt-scripted-const-skip", "tt-model-const", "family-expert", "family-hint", "family-refine")


def ordered(by_arm: dict[str, list[dict]]) -> list[str]:
    return [a for a in ORDER if a in by_arm] + sorted(a for a in by_arm if a not in ORDER)


def arm_table(rule: str, by_arm: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    arms = ordered(by_arm)
    baselines = [b for b in (BASELINE, FORMAT_BASELINE) if b in by_arm]
    head = ["arm", "seeds", *[name for _, name in GREEDY_KEYS], "pass@4 (100 items, T=1)",
            *[f"Δ acc vs {b} [95% CI], {which} rule" for b in baselines for which in ("paper", "lenient")]]
    lines = md_head(head)
    for arm in arms:
        ps = by_arm[arm]
        cells = [labels[arm], str(len(ps))]
        cells += [fmt([p["greedy"][k] for p in ps]) for k, _ in GREEDY_KEYS]
        cells.append(fmt([p["pass4"][f"pass@4 {rule}"] for p in ps if "pass4" in p]))
        cells += [delta(ps, by_arm[b], which) if arm != b else "–" for b in baselines for which in ("paper", "lenient")]
        lines.append(md_row(cells))
    return lines


REFERENCE = "tt-scripted-const"
"""ThinkTuning's variants (another teacher, schedule, shaping or splice boundary) and the guidance family's arms
(issue 17) are compared with ThinkTuning under the scripted teacher on a constant schedule, on the seeds both have."""
VARIANTS = ("tt-scripted-const-skip", "tt-scripted-const-luffy", "tt-scripted-paper", "tt-model-const")
FAMILY = ("family-expert", "family-hint", "family-refine")


def same_seed_table(by_arm: dict[str, list[dict]], labels: dict[str, str], group: tuple[str, ...]) -> list[str]:
    """Each arm of ``group`` against ``REFERENCE`` on the same seeds: the arm's cells and the paired difference over
    items and those seeds."""
    arms = [a for a in group if a in by_arm]
    if not arms or REFERENCE not in by_arm:
        return []
    head = ["arm", "seeds", *[name for _, name in GREEDY_KEYS[:6]], "pass@4 (100 items, T=1)",
            *[f"Δ acc vs {REFERENCE} [95% CI], {which} rule" for which in ("paper", "lenient")]]
    lines = md_head(head)
    for arm in [REFERENCE, *arms]:
        ps = by_arm[arm]
        seeds = sorted(p["seed"] for p in ps)
        if arm == REFERENCE:
            seeds = sorted({p["seed"] for a in arms for p in by_arm[a]} & set(seeds))
            ps = [p for p in ps if p["seed"] in seeds]
        base = [p for p in by_arm[REFERENCE] if p["seed"] in seeds]
        cells = [labels[arm], ", ".join(map(str, seeds))]
        cells += [fmt([p["greedy"][k] for p in ps]) for k, _ in GREEDY_KEYS[:6]]
        cells.append(fmt([p["pass4"]["pass@4 paper"] for p in ps if "pass4" in p]))
        same = arm == REFERENCE or len(base) != len(ps)
        cells += ["–" if same else delta(ps, base, which) for which in ("paper", "lenient")]
        lines.append(md_row(cells))
    return lines


def delta(arm: list[dict], base: list[dict], which: str) -> str:
    """The arm's accuracy minus the baseline's under rule ``which``: paired bootstrap over shared items and seeds."""
    ids = sorted(set.intersection(*(set(p["items"]) for p in arm + base)))
    a = [[sum(r[which] for r in p["items"][i]) / len(p["items"][i]) for i in ids] for p in arm]
    b = [[sum(r[which] for r in p["items"][i]) / len(p["items"][i]) for i in ids] for p in base]
    d, lo, hi = paired_bootstrap(a, b)
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + ("*" if significant(lo, hi) else "")


def seed_checks(by_arm: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """Each trained arm against the format baseline over seed means alone (:func:`welch_interval`,
    :func:`permutation_p`): what the seeds carry without the items' resampling."""
    if FORMAT_BASELINE not in by_arm:
        return []
    base = by_arm[FORMAT_BASELINE]
    checks = [("paper", "greedy"), ("lenient", "greedy"), ("pass@4 paper", "pass4"), ("paper", "pass4")]
    names = ("paper rule", "lenient rule", "pass@4 (paper rule)", "one sample at T=1 (paper rule)")
    head = ["arm", "seeds vs baseline seeds", *[f"Δ {name}, Welch 95% t over seed means; exact permutation p"
                                                for name in names]]
    lines = md_head(head)
    for arm in ordered(by_arm):
        ps = by_arm[arm]
        if arm == FORMAT_BASELINE or len(ps) < 2:
            continue
        cells = [labels[arm], f"{len(ps)} vs {len(base)}"]
        for key, part in checks:
            a, b = [p[part][key] for p in ps if part in p], [p[part][key] for p in base if part in p]
            if not a or not b:
                cells.append("–")
                continue
            d, lo, hi = welch_interval(a, b)
            cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{'*' if significant(lo, hi) else ''}; "
                         f"p = {permutation_p(a, b):.2f}")
        lines.append(md_row(cells))
    return lines


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


def rate(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def decoding_table(by_arm: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """Greedy against sampled decoding on the same 100 items, per seed: how much of the gap between greedy
    accuracy and pass@4 is the answer loop (a greedy habit) and how much is four tries."""
    head = ["arm", "seed", "greedy accuracy", "one sample at T=1", "pass@4", "greedy loops", "sampled loops",
            "greedy loops whose first boxed answer was right"]
    lines = md_head(head)
    for arm in ordered(by_arm):
        for p in sorted((p for p in by_arm[arm] if "pass4" in p), key=lambda p: p["seed"]):
            greedy = [p["items"][i][0] for i in p["pass4_items"] if i in p["items"]]
            lost = sum(r["loop"] * r["first_right"] for r in greedy) / len(greedy)
            cells = [labels[arm], str(p["seed"]), f"{rate(greedy, 'paper'):.2f}", f"{p['pass4']['paper']:.2f}",
                     f"{p['pass4']['pass@4 paper']:.2f}", f"{rate(greedy, 'loop'):.2f}", f"{p['pass4']['loop']:.2f}",
                     f"{lost:.2f}"]
            lines.append(md_row(cells))
    return lines


SEED_KEYS = [("paper", "paper rule"), ("lenient", "last-number rule"), ("boxed", "boxed"), ("tokens", "mean tokens"),
             ("loop", "answer loops"), ("reflect", "reflection cue")]


def seed_table(by_arm: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """One row per piece: the spread across seeds that the means hide."""
    head = ["arm", "seed", *[name for _, name in SEED_KEYS], "pass@4 (100 items, T=1)"]
    lines = md_head(head)
    for arm in ordered(by_arm):
        for p in sorted(by_arm[arm], key=lambda p: p["seed"]):
            g = p["greedy"]
            cells = [labels[arm], str(p["seed"]), *[f"{g[k]:.1f}" if k == "tokens" else f"{g[k]:.3f}" for k, _ in
                                                    SEED_KEYS]]
            cells.append(f"{p['pass4']['pass@4 paper']:.2f}" if "pass4" in p else "–")
            lines.append(md_row(cells))
    return lines


WINDOW_KEYS = [("reward", "correct"), ("boxed", "boxed"), ("reflect", "reflection cue"), ("loop", "answer loop"),
               ("ended", "ended before the limit")]


def window_table(by_arm: dict[str, list[dict]], labels: dict[str, str], width: int = 10) -> list[str]:
    """Internalisation in numbers: the student's own samples per ``width``-step window, mean over seeds."""
    arms = [a for a in ordered(by_arm) if any("curves" in p for p in by_arm[a])]
    if not arms:
        return []
    last = max(max(p["curves"]["step"]) for a in arms for p in by_arm[a] if "curves" in p)
    windows = [(lo, min(lo + width - 1, last)) for lo in range(1, last + 1, width)]
    head = ["arm", "seeds", "own samples", *[f"steps {lo}–{hi}" for lo, hi in windows]]
    lines = md_head(head)
    for arm in arms:
        cs = [p["curves"] for p in by_arm[arm] if "curves" in p]
        for key, name in WINDOW_KEYS:
            cells = [labels[arm], str(len(cs)), name]
            for lo, hi in windows:
                per_seed = [[v for s, v in zip(c["step"], c[key], strict=True) if lo <= s <= hi] for c in cs]
                per_seed = [sum(v) / len(v) for v in per_seed if v]
                cells.append(f"{100 * sum(per_seed) / len(per_seed):.0f}%" if per_seed else "–")
            lines.append(md_row(cells))
    return lines


def quotes(by_arm: dict[str, list[dict]], labels: dict[str, str], n: int = 3) -> list[str]:
    """Guided rollouts as the student saw them: its own words, then the teacher's (between ⟦ and ⟧)."""
    lines = []
    for arm, ps in by_arm.items():
        if not arm.startswith("tt-") or "rollouts" not in ps[0]:
            continue
        guided = [r for r in ps[0]["rollouts"] if r.get("guided") and r.get("teacher_span")]
        if not guided:
            continue
        picks = [guided[0], guided[len(guided) // 2], guided[-1]][:n]
        lines += [f"**{labels[arm]}**, seed {ps[0]['seed']}:", ""]
        for r in picks:
            a, b = r["teacher_span"]
            text = r["response"][:a] + "⟦" + r["response"][a:b] + "⟧" + r["response"][b:]
            lines += [f"- step {r['step']}, question: {r['question']} (reference {r['reference']}; reward "
                      f"{r['reward']}, student's own answer was {'right' if r['student_correct'] else 'wrong'})",
                      "", "  ```", *["  " + t for t in text.splitlines()], "  ```", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--figures", default=str(ROOT / "experiments" / "figures"))
    ap.add_argument("--output", default=None, help="default: RESULTS/SUMMARY.md")
    args = ap.parse_args(argv)
    results, figures = Path(args.results), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    found = pieces(results)
    doc = ["# Evidence experiment: generated summary", "",
           f"Generated by `experiments/analyze.py` from {len(found)} committed piece(s) under `{results.name}/`.", ""]
    for rule in ("paper", "lenient"):
        by_arm: dict[str, list[dict]] = defaultdict(list)
        labels = {}
        for info in (p for p in found if p["rule"] == rule):
            d = info["dir"]
            ev = load(d / "eval-greedy.json.gz")
            info["items"] = item_table(ev)
            info["greedy"] = summarise(info["items"])
            if (d / "eval-pass4.json.gz").is_file():
                info["pass4_items"] = item_table(load(d / "eval-pass4.json.gz"))
                info["pass4"] = summarise(info["pass4_items"])
            if (d / "rollouts.jsonl.gz").is_file():
                info["rollouts"] = load(d / "rollouts.jsonl.gz")
                info["curves"] = curves(info["rollouts"])
            by_arm[info["arm"]].append(info)
            labels[info["arm"]] = info["label"]
        if not by_arm:
            continue
        fallback = "none: only a \\boxed{} answer scores" if rule == "paper" else "last_number"
        doc += [f"## {rule} rule (training reward: reward.answer_fallback={fallback})",
                "", *arm_table(rule, by_arm, labels), ""]
        doc += ["Cells: mean over seeds ± half-width of the 95% t-interval (one seed: no interval). Δ: paired "
                "bootstrap over the 300 items and the seeds; `*`: the interval excludes 0.", ""]
        doc += [f"### Each seed ({rule} rule)", "", *seed_table(by_arm, labels), ""]
        checks = seed_checks(by_arm, labels)
        if checks:
            doc += [f"### Seed-level check against {FORMAT_BASELINE} ({rule} rule)", "", *checks, "",
                    "Only the seed means, no items: a Welch t-interval (degrees of freedom rounded down) and an "
                    "exact two-sided permutation test. Its smallest possible p is 0.10 with 3 + 3 seeds, 0.029 with "
                    "4 + 4 and 0.008 with 5 + 5; with unequal groups it can reach 1 / C(n, k) (0.029 for 3 + 4).", ""]
        decoding = decoding_table(by_arm, labels)
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
            table = same_seed_table(by_arm, labels, group)
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
