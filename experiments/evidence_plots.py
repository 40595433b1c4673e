"""The evidence experiment's figures: learning curves of the student's own samples, and final accuracy per arm.

Used by ``experiments/analyze.py``, which computes what they draw.
"""

from __future__ import annotations

import math
from pathlib import Path

from thinktuning.eval.stats import mean_ci


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` over ``n`` items (sensible at 0 and 1, unlike p +- 2 se)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def moving_average(values: list[float], window: int = 5) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


CURVES = [("reward", "correct (training rule)"), ("boxed", "boxed an answer"), ("reflect", "reflection cue"),
          ("ended", "ended before the 96-token limit")]
"""What the learning-curve panels show. Answer loops need room to show; at 96 training tokens they stay near 0, so
the panels show whether the student still stops instead (the eval measures loops at 256 tokens)."""


def plot_curves(rule: str, arms: list[str], by_arm: dict[str, list[dict]], labels: dict[str, str],
                out: Path, name: str = "curves") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in arms if a != "zero-shot" and any("curves" in p for p in by_arm[a])]
    if not arms:
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(16, 4.2 + 0.22 * len(arms)), sharex=True)
    for arm in arms:
        cs = [p["curves"] for p in by_arm[arm] if "curves" in p]
        n = min(len(c["step"]) for c in cs)
        steps = cs[0]["step"][:n]
        for ax, (key, title) in zip(axes, CURVES, strict=True):
            smooth = [moving_average(c[key][:n]) for c in cs]  # per seed: 16 rollouts a step are noisy
            mean = [sum(col) / len(col) for col in zip(*smooth, strict=True)]
            lo, hi = [min(col) for col in zip(*smooth, strict=True)], [max(col) for col in zip(*smooth, strict=True)]
            line, = ax.plot(steps, mean, label=f"{labels[arm]} (n={len(cs)})")
            if len(cs) > 1:
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("training step")
            ax.set_ylim(-0.02, 1.02)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Internalisation, {rule} rule: the student's own samples in training (5-step mean; band: min-max "
                 "over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0.02 + 0.04 * ((len(arms) + 1) // 2), 1, 1))
    path = out / f"{name}-{rule}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(rule: str, arms: list[str], by_arm: dict[str, list[dict]], labels: dict[str, str],
                  out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms[::-1]  # first arm on top
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(arms) + 1.8), sharey=True)
    for ax, which, title in zip(axes, ("paper", "lenient"), ("paper rule (boxed)", "lenient rule (last number)"),
                                strict=True):
        for y, arm in enumerate(arms):
            vals = [p["greedy"][which] for p in by_arm[arm]]
            m, lo, hi = mean_ci(vals)
            if len(vals) == 1:  # one seed: the items' 95% Wilson interval instead (dashed)
                lo, hi = wilson(vals[0], len(by_arm[arm][0]["items"]))
            ax.plot(vals, [y] * len(vals), "o", color="#999", ms=4)
            ax.plot([m], [y], "D", color="#1f77b4")
            ax.plot([lo, hi], [y, y], "-" if len(vals) > 1 else "--", color="#1f77b4")
        ax.set_yticks(range(len(arms)), [f"{labels[a]} (n={len(by_arm[a])})" for a in arms], fontsize=8)
        ax.set_title(f"held-out accuracy, {title}", fontsize=10)
        ax.set_xlim(-0.02, max(0.6, ax.get_xlim()[1]))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Greedy accuracy on 300 held-out arithmetic problems\ngrey: seeds; blue: mean and 95% t-interval over "
                 "seeds; dashed: one seed, 95% Wilson interval over items", fontsize=10)
    fig.tight_layout()
    path = out / f"accuracy-{rule}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
