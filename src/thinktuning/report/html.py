"""``thinktuning report RUN_DIR [RUN_DIR ...]``: one self-contained HTML file about one or several runs.

The page has a summary of each run, the metric plots (runs overlaid, one legend), a rollout viewer for chosen
steps (every group with its rollouts, reward and advantage; the teacher's words in guided rollouts marked apart
from the student's, with the teacher's opinion; filters for guided / correct / incorrect), and eval and reflection
tables when a run folder has ``eval.json`` / ``reflection.json``.

It opens from disk with no network: no external URL, inline SVG plots, inline style, and one inline script of
ours that only toggles CSS classes. Model output is untrusted: every piece of run data is HTML-escaped, and a
Content-Security-Policy lets only our own script (by its hash) run, so a rollout's ``<script>`` stays text.

Optional files (written by later tools; any JSON object is shown, nested objects flatten to dotted keys):

- ``eval.json``: ``{benchmark: {metric: value}}``, e.g. ``{"gsm8k": {"accuracy": 0.41, "n": 1319}}``;
- ``reflection.json``: ``{behaviour: rate}``, e.g. ``{"self-critique": 0.12, "self-conflict": 0.03}``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thinktuning.errors import NotUtf8Error, ReportError
from thinktuning.jsonl import read_jsonl
from thinktuning.outputs import check_output_file
from thinktuning.report import accounting
from thinktuning.report.plots import COLORS, metrics_svg


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else esc(value)
    return format(value, spec) if math.isfinite(value) else "n/a"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path} is not valid JSON: {err}") from None


def _read_log(path: Path) -> list[dict[str, Any]]:
    """A run log's records (a line cut short by a crash is skipped); bytes that are not UTF-8 are a ReportError."""
    try:
        return read_jsonl(path, "skip")
    except NotUtf8Error as err:
        raise ReportError(f"{err.path}: line {err.line} is not UTF-8 text ({err.detail}); thinktuning writes its logs "
                          "as ASCII JSON lines, so this file was damaged or written by another program. Restore it "
                          "from a copy or remove that line, or leave this run folder out") from None


@dataclass
class Run:
    path: Path
    label: str
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    rollout_steps: list[int]
    extras: dict[str, Any] = field(default_factory=dict)  # eval.json, reflection.json when present

    @property
    def guidance(self) -> bool:
        return bool(self.config.get("guidance", {}).get("enabled", True))


def load_run(path: str | Path) -> Run:
    run = Path(path)
    if not run.is_dir():
        raise ReportError(f"{run} is not a folder; give run folders (each with metrics.jsonl)")
    if not (run / "metrics.jsonl").is_file() and not (run / "config.yaml").is_file():
        raise ReportError(f"{run} is not a thinktuning run folder (no metrics.jsonl or config.yaml)")
    config: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ReportError(f"{run / 'config.yaml'} is not valid YAML: {err}") from None
    steps = sorted({r["step"] for r in _read_log(run / "rollouts.jsonl") if isinstance(r.get("step"), int)})
    extras = {name: data for name in ("eval", "reflection") if (data := _read_json(run / f"{name}.json")) is not None}
    out = Run(run, run.name, config if isinstance(config, dict) else {}, _read_json(run / "run.json") or {},
              _read_log(run / "metrics.jsonl"), steps, extras)
    preset = out.config.get("preset") or out.info.get("preset")
    tags = [str(preset)] if preset else []
    if not out.guidance:
        tags.append("guidance off")
    elif (out.config.get("teacher") or {}).get("backend") == "scripted":  # a research instrument: say so in tables
        tags.append("scripted teacher")
    out.label = f"{run.resolve().name} ({', '.join(tags)})" if tags else run.resolve().name
    return out


def _unique_labels(runs: list[Run]) -> None:
    """Two folders with the same name (runs/a/x, runs/b/x) get their parent folder in the label."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.resolve().parent.name}/{r.label}"


def choose_steps(available: list[int], requested: list[int] | None = None) -> list[int]:
    """The requested steps that have rollouts, or by default the first, a middle and the last such step."""
    if requested:
        return [s for s in dict.fromkeys(requested) if s in set(available)]
    if not available:
        return []
    return list(dict.fromkeys([available[0], available[(len(available) - 1) // 2], available[-1]]))


# ------------------------------------------------------------------------------------------- rollouts


def is_correct(r: dict[str, Any]) -> bool:
    reward = r.get("reward")
    return isinstance(reward, (int, float)) and reward > 0


def render_response(text: str, span: Any, opinion: str | None = None) -> str:
    """The response, escaped, with the teacher's characters ``text[start:end]`` in ``<mark class="teacher">``."""
    if (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, int) for x in span)
            and 0 <= span[0] < span[1] <= len(text)):
        start, end = span
        title = f"teacher (opinion: {opinion})" if opinion else "teacher"
        return (f'{esc(text[:start])}<mark class="teacher" title="{esc(title)}">{esc(text[start:end])}</mark>'
                f"{esc(text[end:])}")
    return esc(text)


GUIDED_BADGES = {"expert": "expert trace (the worked solution)", "hint": "hint (start of the worked solution)"}
"""The badge of a rollout guided without a teacher (``guidance.mode`` expert or hint; their ``opinion`` says which)."""


def render_rollout(r: dict[str, Any]) -> str:
    guided, correct = bool(r.get("guided")), is_correct(r)
    classes = ["rollout", "guided" if guided else "unguided", "correct" if correct else "incorrect"]
    badges = []
    if guided:
        what = GUIDED_BADGES.get(r.get("opinion") or "", f"teacher says: {r.get('opinion') or '?'}")
        badges.append(f'<span class="badge teacher">guided · {esc(what)}</span>')
    elif r.get("no_feedback"):
        badges.append('<span class="badge nofb">sent to the teacher: no usable feedback</span>')
    badges.append(f'<span class="badge {"ok" if correct else "bad"}">{"correct" if correct else "incorrect"}</span>')
    if not r.get("finished", True):
        badges.append('<span class="badge">truncated</span>')
    alone = r.get("student_correct")
    meta = (f'<span class="idx">#{esc(r.get("index", "?"))}</span> reward <b>{_fmt(r.get("reward"))}</b> · '
            f'advantage <b>{_fmt(r.get("advantage"), "+.3f")}</b> · {esc(r.get("response_tokens", "?"))} tokens'
            + (f" · student alone: {'correct' if alone else 'incorrect'}" if guided and alone is not None else ""))
    raw = ""
    if r.get("teacher_raw"):
        raw = (f"<details><summary>teacher's raw output</summary><pre class=\"raw\">{esc(r['teacher_raw'])}"
               "</pre></details>")
    body = render_response(str(r.get("response", "")), r.get("teacher_span"), r.get("opinion"))
    return (f'<div class="{" ".join(classes)}"><div class="meta">{meta} {" ".join(badges)}</div>'
            f'<pre class="response">{body}</pre>{raw}</div>')


def render_step(step: int, records: list[dict[str, Any]], max_groups: int | None = None) -> str:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r.get("group", 0), r.get("index", 0))):
        groups.setdefault(r.get("group", 0), []).append(r)
    keys = list(groups)
    shown = keys[:max_groups] if max_groups else keys
    n_guided = sum(bool(r.get("guided")) for r in records)
    n_correct = sum(is_correct(r) for r in records)
    parts = [f'<details class="step" open><summary>step {esc(step)} · {len(records)} rollouts in {len(keys)} '
             f"groups · {n_guided} guided · {n_correct} correct"
             + (f" · showing {len(shown)} groups" if len(shown) < len(keys) else "") + "</summary>"]
    for key in shown:
        rs = groups[key]
        first = rs[0]
        parts.append(f'<div class="group"><div class="ghead">group {esc(key)} · reference '
                     f'<code>{esc(first.get("reference", ""))}</code></div>'
                     f'<pre class="question">{esc(first.get("question", ""))}</pre>')
        parts.extend(render_rollout(r) for r in rs)
        parts.append("</div>")
    parts.append("</details>")
    return "".join(parts)


def render_rollouts(run: Run, steps: list[int] | None, max_groups: int | None) -> str:
    chosen = choose_steps(run.rollout_steps, steps)
    if not chosen:
        why = "no rollouts.jsonl (log_rollouts=false?)" if not run.rollout_steps else "none of the chosen steps"
        return f'<p class="note">{esc(run.label)}: {why}</p>'
    wanted = set(chosen)
    by_step: dict[int, list[dict[str, Any]]] = {s: [] for s in chosen}
    for r in _read_log(run.path / "rollouts.jsonl"):
        if r.get("step") in wanted:
            by_step[r["step"]].append(r)
    missing = [s for s in steps or [] if s not in wanted]
    note = f'<p class="note">no rollouts logged for step {", ".join(map(str, missing))}</p>' if missing else ""
    return f"<h3>{esc(run.label)}</h3>" + note + "".join(render_step(s, by_step[s], max_groups) for s in chosen)


# --------------------------------------------------------------------------------------- page sections


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1] or "value": data}


def render_extra(runs: list[Run], name: str, title: str) -> str:
    having = [r for r in runs if name in r.extras]
    if not having:
        return ""
    flat = [_flatten(r.extras[name]) for r in having]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    head = "".join(f"<th>{esc(r.label)}</th>" for r in having)
    rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{_fmt(f.get(k))}</td>" for f in flat) + "</tr>"
                   for k in keys)
    return f'<h2>{esc(title)}</h2><table class="extra"><tr><th>{esc(name)}.json</th>{head}</tr>{rows}</table>'


def render_summary(runs: list[Run]) -> str:
    rows = []
    for i, r in enumerate(runs):
        last = r.metrics[-1] if r.metrics else {}
        total = r.info.get("total_steps", "?")
        devs = "".join(f"<li>{esc(d)}</li>" for d in r.info.get("deviations_from_paper", []))
        student = r.config.get("model", {}).get("student", "?")
        rows.append(
            f'<tr><td><span class="swatch" style="background:{COLORS[i % len(COLORS)]}"></span>{esc(r.label)}'
            f'<div class="path">{esc(r.path)}</div></td><td>{esc(student)}</td>'
            f"<td>{'on' if r.guidance else 'off'}</td><td>{esc(last.get('step', 0))} / {esc(total)}</td>"
            f"<td>{_fmt(last.get('reward/mean'))}</td><td>{_fmt(last.get('accuracy'))}</td>"
            f"<td>{esc(r.info.get('started', '?'))}</td><td><ul>{devs}</ul></td></tr>"
        )
    return ("<table class=\"summary\"><tr><th>run</th><th>student</th><th>guidance</th><th>steps</th>"
            "<th>last reward</th><th>last accuracy</th><th>started</th><th>deviations from the paper</th></tr>"
            + "".join(rows) + "</table>")


def render_accounting(runs: list[Run]) -> str:
    """The teacher's accounting, totalled over each run (report/accounting.py); empty without guidance."""
    sums = [accounting.totals(r.metrics) for r in runs]
    keys = [(k, label) for k, label in accounting.ROWS if any(k in s for s in sums)]
    if not any(r.guidance for r in runs) or not keys:
        return ""
    head = "".join(f"<th>{esc(r.label)}</th>" for r in runs)
    def cell(total: dict[str, float], key: str) -> str:
        if key not in total:
            return ""
        return _fmt(total[key], ".2f") if key in ("teacher/ms", "teacher/cost") else esc(int(total[key]))

    body = "".join(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{cell(s, k)}</td>" for s in sums) + "</tr>"
                   for k, label in keys)
    shares = [accounting.rates(s) for s in sums]
    body += "".join(
        f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{_fmt(x.get(name))}</td>" for x in shares) + "</tr>"
        for name in dict.fromkeys(n for x in shares for n in x))
    return f'<h2>Teacher accounting, whole run</h2><table class="extra"><tr><th></th>{head}</tr>{body}</table>'


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1240px;padding:16px;
color:#1d1d1f;background:#fff}h1{font-size:22px;margin:4px 0 12px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #ddd}h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse;width:100%}
th,td{border:1px solid #e3e3e3;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f6f6}
td ul{margin:0;padding-left:16px;font-size:12px}.path{color:#888;font-size:11px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
svg.plot{width:100%;height:auto}.legend{margin:8px 0}.filters{display:none}html.js .filters{display:block}
.filters label{margin-right:14px}
mark.teacher{background:#ffe3b8;color:#5a2d00;border-bottom:2px solid #e8590c;padding:0 1px}
.key-student{border-bottom:2px solid #bbb}
details.step{border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:4px 10px}
details.step>summary{font-weight:600;cursor:pointer;padding:4px 0}
.group{border-left:3px solid #c9d7ef;margin:10px 0 14px;padding-left:10px}.ghead{font-weight:600;color:#345}
pre{white-space:pre-wrap;word-wrap:break-word;margin:4px 0;font:12.5px/1.45 ui-monospace,Menlo,Consolas,monospace}
pre.question{color:#345;background:#f3f6fb;padding:4px 6px;border-radius:4px}
.rollout{border:1px solid #e6e6e6;border-radius:5px;padding:4px 8px;margin:6px 0}
.rollout.guided{border-color:#f0b27a;background:#fffaf4}.meta{font-size:12px;color:#555}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#eee;margin-left:4px}
.badge.teacher{background:#e8590c;color:#fff}.badge.ok{background:#d3f2d9;color:#17622a}
.badge.bad{background:#f8d7da;color:#8a1c24}.badge.nofb{background:#6c757d;color:#fff}
pre.raw{color:#666;background:#f7f7f7;padding:4px}.note{color:#888}
body.hide-guided .rollout.guided,body.hide-unguided .rollout.unguided,body.hide-correct .rollout.correct,
body.hide-incorrect .rollout.incorrect{display:none}
"""
# The page's only script: the filter boxes hide rollouts by toggling a class on <body> (the boxes show only once
# it ran). It is allowed by its hash in the Content-Security-Policy: no other script can run, whatever a rollout
# contains.
SCRIPT = """
document.documentElement.classList.add("js");
document.querySelectorAll("input[data-hide]").forEach(function (box) {
  box.addEventListener("change", function () {
    document.body.classList.toggle("hide-" + box.dataset.hide, !box.checked);
  });
});
"""
REPORT_MARKER = '<meta name="generator" content="thinktuning report">'
"""In the head of every report, so that ``write_report`` overwrites its own reports and nothing else."""
_OLD_REPORT_TITLE = "<title>thinktuning report: "
"""What reports written before the marker existed begin their title with."""

FILTERS = (("guided", "guided"), ("unguided", "unguided"), ("correct", "correct (reward &gt; 0)"),
           ("incorrect", "incorrect"))


def build_report(run_dirs: list[str | Path], steps: list[int] | None = None, max_groups: int | None = None) -> str:
    """The HTML text of the report of ``run_dirs`` (raises ReportError for a folder that is not a run)."""
    if not run_dirs:
        raise ReportError("give at least one run folder")
    runs = [load_run(p) for p in dict.fromkeys(Path(d).resolve() for d in run_dirs)]  # a folder given twice: once
    _unique_labels(runs)
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{script_hash}'"
    plot = metrics_svg([(r.label, r.metrics) for r in runs]) if any(r.metrics for r in runs) else (
        '<p class="note">no metrics.jsonl records yet</p>')
    filters = "".join(f'<label><input type="checkbox" data-hide="{k}" checked> {t}</label>' for k, t in FILTERS)
    title = "thinktuning report: " + ", ".join(r.label for r in runs)
    parts = [
        "<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8">{REPORT_MARKER}',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>", render_summary(runs),
        "<h2>Training metrics</h2>", plot, render_accounting(runs),
        "<h2>Rollouts</h2>",
        '<p class="legend">Guided rollouts: the student\'s own text, then <mark class="teacher">the teacher\'s '
        "words</mark> (marked), spliced in as if the student wrote them; the badge gives the teacher's opinion. "
        "Advantage is GRPO's, within the group.</p>",
        f'<p class="filters">Show: {filters}</p>',
        *(render_rollouts(r, steps, max_groups) for r in runs),
        render_extra(runs, "eval", "Evaluation"),
        render_extra(runs, "reflection", "Reflection rates"),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def is_report(path: Path) -> bool:
    """Whether ``path`` is a report this tool wrote (its head holds the marker, or an older report's title)."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    return REPORT_MARKER.encode() in head or _OLD_REPORT_TITLE.encode() in head


def _check_output(out: Path, default: bool) -> Path:
    """``out`` if the report may be written there: writable, and not a file of someone else's."""
    check_output_file(out, "--output", "report.html", default=default)
    if out.is_file() and not is_report(out):
        raise ReportError(f"{out} exists and is not a report written by thinktuning report; refusing to overwrite it. "
                          "Choose another --output (e.g. a new .html file), or remove that file first")
    return out


def write_report(run_dirs: list[str | Path], output: str | Path | None = None, steps: list[int] | None = None,
                 max_groups: int | None = None) -> Path:
    """Write the report; default: ``RUN_DIR/report.html`` for one run, ``report.html`` here for several.

    The output must be writable, and an existing file is replaced only if it is a report of ours (``--output
    RUN/metrics.jsonl`` would otherwise turn a run's metrics into HTML). A given ``--output`` is checked before the
    runs are read; the default one after, so that a folder that is not a run is named as such first."""
    if output:
        _check_output(Path(output), default=False)
    text = build_report(run_dirs, steps, max_groups)
    out = _check_output(Path(output) if output else (Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1
                                                     else Path("report.html")), default=not output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
