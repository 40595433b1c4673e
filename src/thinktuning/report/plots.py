"""The report's metric plots: one matplotlib figure, rendered to an inline SVG string (no pyplot, no global
backend: the figure draws on its own SVG canvas, so importing this never changes a notebook's backend)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

# (metrics.jsonl key or derived name, panel title)
PANELS: list[tuple[str, str]] = [
    ("reward/mean", "reward (mean)"),
    ("accuracy", "accuracy (student alone)"),
    ("guidance/fraction", "guided fraction"),
    ("no_feedback_rate", "teacher no-feedback rate"),
    ("guidance/teacher_token_fraction", "teacher-token fraction"),
    ("loss/shaped_weight_mean", "shaped weight (mean)"),
    ("response_length/mean", "response length (tokens)"),
    ("loss", "loss"),
    ("grad_norm", "grad norm"),
    ("time/step", "step time (s)"),
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _value(m: dict[str, Any], key: str) -> float:
    """One point of a panel; NaN where the run did not measure it (matplotlib leaves a gap)."""
    if key == "no_feedback_rate":  # of the rollouts handed to the teacher, the share it gave no usable feedback
        asked = (m.get("guidance/guided") or 0) + (m.get("guidance/no_feedback") or 0)
        return (m.get("guidance/no_feedback") or 0) / asked if asked else math.nan
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def series(metrics: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric; the last record of a step wins (a step logged twice by an old crash)."""
    by_step: dict[int, float] = {}
    for m in metrics:
        if isinstance(m.get("step"), int):
            by_step[m["step"]] = _value(m, key)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def metrics_svg(runs: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """All panels for all runs (``(label, metrics)`` pairs), overlaid, with one legend; returns ``<svg>...``."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    style = {"svg.fonttype": "none", "svg.hashsalt": "thinktuning", "font.size": 9, "axes.titlesize": 10}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(12, 8.4))
        FigureCanvasSVG(fig)
        axes = list(fig.subplots(4, 3).flat)
        handles: dict[int, Any] = {}  # run index -> its line, for the legend
        all_steps = [s for _, metrics in runs for s in series(metrics, "step")[0]] or [1]
        lo, hi = min(all_steps), max(all_steps)
        pad = max(0.5, 0.03 * (hi - lo))  # every panel spans the same steps, even where a metric has gaps
        for ax, (key, title) in zip(axes, PANELS, strict=False):
            drawn = False
            for i, (label, metrics) in enumerate(runs):
                steps, values = series(metrics, key)
                if not any(math.isfinite(v) for v in values):
                    continue
                (line,) = ax.plot(steps, values, color=COLORS[i % len(COLORS)], lw=1.6, label=label,
                                  marker="o" if len(steps) <= 40 else None, ms=3)
                handles.setdefault(i, line)
                drawn = True
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.set_xlabel("step")
            ax.set_xlim(lo - pad, hi + pad)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not drawn:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", color="#888", transform=ax.transAxes)
        rest = axes[len(PANELS):]
        for ax in rest:
            ax.axis("off")
        if handles and rest:
            shown = sorted(handles)
            rest[0].legend([handles[i] for i in shown], [runs[i][0] for i in shown], loc="upper left",
                           title="runs", frameon=False, fontsize=10)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return _inline(buf.getvalue())


def _inline(svg: str) -> str:
    """Make matplotlib's standalone SVG document an inline ``<svg>`` element that scales with the page: drop the
    XML prolog, doctype and metadata, the namespace declarations (HTML parsing supplies them) and fixed size."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    head_end = svg.index(">")
    head = svg[:head_end]
    head = re.sub(r'\s(xmlns(:xlink)?|width|height|version)="[^"]*"', "", head)
    return head + ' class="plot" role="img" aria-label="training metrics"' + svg[head_end:]
