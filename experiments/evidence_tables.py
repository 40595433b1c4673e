"""The evidence experiment's markdown tables: arms with intervals, each seed, seed-level checks, greedy against
sampled decoding, the internalisation windows, same-seed comparisons of the variants, and quoted rollouts.

Used by ``experiments/analyze.py``, which loads the pieces and computes the per-item rows these tables read.
"""

from __future__ import annotations

import math

from thinktuning.eval.stats import mean_ci, paired_bootstrap, permutation_p, significant, welch_interval

BASELINE = "grpo"
FORMAT_BASELINE = "grpo-format"
"""GRPO with a reward for a boxed number: the baseline that also gets a format signal (fair on the paper rule)."""
FADE_BASELINE = "grpo-format-fade"
"""The same bonus fading to 0 over the first third: the control for the paper's guidance schedule."""


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


ORDER = ("zero-shot", "grpo", "grpo-format", "grpo-format-fade", "tt-scripted-const", "tt-scripted-paper",
         "tt-scripted-const-luffy", "tt-scripted-const-skip", "tt-model-const", "family-expert", "family-hint",
         "family-refine")


def ordered(by_arm: dict[str, list[dict]]) -> list[str]:
    return [a for a in ORDER if a in by_arm] + sorted(a for a in by_arm if a not in ORDER)


def arm_table(rule: str, by_arm: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    arms = ordered(by_arm)
    baselines = [b for b in (BASELINE, FORMAT_BASELINE, FADE_BASELINE) if b in by_arm]
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


def same_seed_table(by_arm: dict[str, list[dict]], labels: dict[str, str], group: tuple[str, ...],
                    rule: str = "paper") -> list[str]:
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
        cells.append(fmt([p["pass4"][f"pass@4 {rule}"] for p in ps if "pass4" in p]))
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


def fair_baseline(rule: str) -> str:
    """The baseline a trained arm must beat: under the paper's rule plain GRPO never updates, so the format baseline;
    under the lenient rule plain GRPO has a signal of its own."""
    return FORMAT_BASELINE if rule == "paper" else BASELINE


def seed_checks(by_arm: dict[str, list[dict]], labels: dict[str, str], rule: str = "paper") -> list[str]:
    """Each trained arm against :func:`fair_baseline` over seed means alone (:func:`welch_interval`,
    :func:`permutation_p`): what the seeds carry without the items' resampling."""
    baseline = fair_baseline(rule)
    if baseline not in by_arm:
        return []
    base = by_arm[baseline]
    checks = [("paper", "greedy"), ("lenient", "greedy"), (f"pass@4 {rule}", "pass4"), (rule, "pass4")]
    names = ("paper rule", "lenient rule", f"pass@4 ({rule} rule)", f"one sample at T=1 ({rule} rule)")
    head = ["arm", "seeds vs baseline seeds", *[f"Δ {name}, Welch 95% t over seed means; exact permutation p"
                                                for name in names]]
    lines = md_head(head)
    for arm in ordered(by_arm):
        ps = by_arm[arm]
        if arm == baseline or len(ps) < 2:
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
    return lines if len(lines) > 2 else []  # no arm with 2 seeds yet: no table

def rate(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def decoding_table(by_arm: dict[str, list[dict]], labels: dict[str, str], rule: str = "paper") -> list[str]:
    """Greedy against sampled decoding on the same 100 items, per seed: how much of the gap between greedy
    accuracy and pass@4 is the answer loop (a greedy habit) and how much is four tries."""
    head = ["arm", "seed", "greedy accuracy", "one sample at T=1", "pass@4", "greedy loops", "sampled loops",
            "greedy loops whose first boxed answer was right"]
    lines = md_head(head)
    for arm in ordered(by_arm):
        for p in sorted((p for p in by_arm[arm] if "pass4" in p), key=lambda p: p["seed"]):
            greedy = [p["items"][i][0] for i in p["pass4_items"] if i in p["items"]]
            lost = sum(r["loop"] * r["first_right"] for r in greedy) / len(greedy)
            cells = [labels[arm], str(p["seed"]), f"{rate(greedy, rule):.2f}", f"{p['pass4'][rule]:.2f}",
                     f"{p['pass4'][f'pass@4 {rule}']:.2f}", f"{rate(greedy, 'loop'):.2f}", f"{p['pass4']['loop']:.2f}",
                     f"{lost:.2f}"]
            lines.append(md_row(cells))
    return lines


SEED_KEYS = [("paper", "paper rule"), ("lenient", "last-number rule"), ("boxed", "boxed"), ("tokens", "mean tokens"),
             ("loop", "answer loops"), ("reflect", "reflection cue"),
             ("copied", "first box wrong, a number from the question")]


def seed_table(by_arm: dict[str, list[dict]], labels: dict[str, str], rule: str = "paper") -> list[str]:
    """One row per piece: the spread across seeds that the means hide."""
    head = ["arm", "seed", *[name for _, name in SEED_KEYS], "pass@4 (100 items, T=1)"]
    lines = md_head(head)
    for arm in ordered(by_arm):
        for p in sorted(by_arm[arm], key=lambda p: p["seed"]):
            g = p["greedy"]
            cells = [labels[arm], str(p["seed"]), *[f"{g[k]:.1f}" if k == "tokens" else f"{g[k]:.3f}" for k, _ in
                                                    SEED_KEYS]]
            cells.append(f"{p['pass4'][f'pass@4 {rule}']:.2f}" if "pass4" in p else "–")
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
