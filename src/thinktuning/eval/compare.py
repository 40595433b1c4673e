"""``thinktuning compare``: one Markdown table of several eval results, a column per run and its delta to the first.

Results given as ``LABEL=FILE`` that share a label are one arm over several seeds: its cell is the mean with a 95%
t-interval across seeds, and each accuracy delta to the first arm comes with a paired bootstrap interval over items
and seeds (:mod:`thinktuning.eval.stats`); ``*`` marks a difference whose interval excludes 0.

The table is what goes into a paper draft or a pull request: per benchmark accuracy (and pass@k / maj@k when
sampled), response length and truncation, then the macro average and the reflection rates. Settings that make
numbers incomparable (samples, max_new_tokens, limit, answer fallback, data versions) are listed under the table
rather than silently mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinktuning.errors import CompareError
from thinktuning.eval.evaluate import RESULTS_NAME
from thinktuning.eval.stats import mean_ci, paired_bootstrap, significant

__all__ = ["compare_table", "load_results"]

_COMPARED_SETTINGS = ("samples", "temperature", "top_p", "max_new_tokens", "limit", "answer_fallback", "seed")



def load_results(arg: str | Path) -> dict[str, Any]:
    """A results JSON file, or a run folder's ``eval_results.json`` (the error says how to make it if absent)."""
    path = Path(arg).expanduser()
    if path.is_dir():
        file = path / RESULTS_NAME
        if not file.is_file():
            raise CompareError(f"run folder {path} has no {RESULTS_NAME}: it was not evaluated yet. Run "
                               f"`thinktuning eval --model {path}` first, or pass a results JSON file")
        path = file
    elif not path.is_file():
        raise CompareError(f"{path}: no such file or folder; pass eval results JSON files or evaluated run folders")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompareError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), dict):
        raise CompareError(f"{path}: not a `thinktuning eval` results file (no 'benchmarks' object)")
    data["_path"] = str(path)
    return data


def _label(res: dict[str, Any]) -> str:
    model = res.get("model", {})
    name = model.get("run_dir") or model.get("spec") or res["_path"]
    step = model.get("step")
    return f"{Path(str(name)).name or name}" + (f"@{step}" if step is not None else "")


def _labels(results: list[dict[str, Any]]) -> list[str]:
    """Column titles: the model name; the file name is added where two columns would otherwise read the same."""
    base = [_label(r) for r in results]
    return [f"{b} ({Path(r['_path']).name})" if base.count(b) > 1 else b for b, r in zip(base, results, strict=True)]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _delta(value: Any, first: Any) -> str:
    if not isinstance(value, (int, float)) or not isinstance(first, (int, float)):
        return "–"
    d = value - first
    if isinstance(d, int):
        return f"{d:+d}"
    return f"{d:+.1f}" if abs(value) >= 10 or abs(first) >= 10 else f"{d:+.3f}"


def _rows(results: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    benches: list[str] = []
    for r in results:
        benches += [b for b in r["benchmarks"] if b not in benches]
    rows: list[tuple[str, list[Any]]] = []
    for b in benches:
        keys: list[str] = []
        for r in results:
            keys += [k for k in r["benchmarks"].get(b, {}).get("metrics", {}) if k not in keys]
        for k in keys:
            rows.append((f"{b} {k}", [r["benchmarks"].get(b, {}).get("metrics", {}).get(k) for r in results]))
    macro_keys: list[str] = []
    for r in results:
        macro_keys += [k for k in r.get("macro_average", {}) if k != "reflection" and k not in macro_keys]
    for k in macro_keys:
        rows.append((f"**macro average** {k}", [r.get("macro_average", {}).get(k) for r in results]))
    behaviours: list[str] = []
    for r in results:
        behaviours += [k for k in r.get("macro_average", {}).get("reflection", {}) if k not in behaviours]
    for k in behaviours:
        rows.append((f"reflection {k}", [r.get("macro_average", {}).get("reflection", {}).get(k) for r in results]))
    return rows


def _notes(results: list[dict[str, Any]], labels: list[str]) -> list[str]:
    notes = []
    sets = [sorted(r["benchmarks"]) for r in results]
    if any(s != sets[0] for s in sets):
        notes.append("- benchmark sets differ (" + "; ".join(f"{lab}: {', '.join(s)}" for lab, s in
                                                              zip(labels, sets, strict=True))
                     + "): the macro averages are over different benchmarks and are not comparable")
    first = results[0].get("settings", {})
    for key in _COMPARED_SETTINGS:
        values = [r.get("settings", {}).get(key) for r in results]
        if any(v != first.get(key) for v in values):
            notes.append(f"- settings differ: `{key}` = " + ", ".join(f"{lab}: {v}" for lab, v in
                                                                       zip(labels, values, strict=True)))
    for b in {b for r in results for b in r["benchmarks"]}:
        versions = {r["benchmarks"][b].get("version") for r in results if b in r["benchmarks"]}
        if len(versions) > 1:
            notes.append(f"- `{b}`: different data (version hashes {', '.join(sorted(map(str, versions)))})")
    return notes


def _split_label(arg: str | Path) -> tuple[str | None, str | Path]:
    """``LABEL=PATH`` -> (LABEL, PATH); a plain path (even one holding '=') has no label."""
    text = str(arg)
    label, sep, rest = text.partition("=")
    if sep and label and not Path(text).exists() and "/" not in label:
        return label, rest
    return None, arg


def compare_table(args: list[str | Path]) -> str:
    """The Markdown document: a header line per run (file, model, settings), the table, and any caveats."""
    if not args:
        raise CompareError("compare needs at least one eval results file or run folder")
    split = [_split_label(a) for a in args]
    if any(label is not None for label, _ in split):
        return _grouped_table([(label or _label(load_results(path)), load_results(path)) for label, path in split])
    return _plain_table(args)


def _item_scores(res: dict[str, Any], bench: str) -> dict[str, float]:
    """Per item id, the mean correctness of its samples (accuracy for greedy, avg@k when sampled)."""
    out = {}
    for item in res["benchmarks"].get(bench, {}).get("items", []):
        samples = item.get("samples") or []
        if samples:
            out[str(item["id"])] = sum(bool(s.get("correct")) for s in samples) / len(samples)
    return out


def _cell(values: list[Any]) -> str:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return "–"
    m, _lo, hi = mean_ci([float(v) for v in nums])
    return _fmt(m) if len(nums) == 1 else f"{_fmt(m)} ± {abs(hi - m):.3f}"


def _grouped_table(labelled: list[tuple[str, dict[str, Any]]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, res in labelled:
        groups.setdefault(label, []).append(res)
    labels = list(groups)
    first = labels[0]
    head = ["metric", *[f"{lab} (n={len(groups[lab])})" for lab in labels[:1]]]
    for lab in labels[1:]:
        head += [f"{lab} (n={len(groups[lab])})", f"Δ {lab} [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_label_rows = {lab: dict(_rows(groups[lab])) for lab in labels}
    names = [n for n, _ in _rows([r for lab in labels for r in groups[lab]])]
    caveats = []
    for name in names:
        vals = {lab: by_label_rows[lab].get(name, []) for lab in labels}
        cells = [name, _cell(vals[first])]
        for lab in labels[1:]:
            cells.append(_cell(vals[lab]))
            bench, _, metric = name.partition(" ")
            if metric == "accuracy" and not bench.startswith("**"):
                cells.append(_boot_cell(groups[lab], groups[first], bench, caveats, lab))
            else:
                a = [v for v in vals[lab] if isinstance(v, (int, float))]
                b = [v for v in vals[first] if isinstance(v, (int, float))]
                cells.append(_delta(sum(a) / len(a), sum(b) / len(b)) if a and b else "–")
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes([r for lab in labels for r in groups[lab]], [lab for lab in labels for _ in groups[lab]])
    doc = ["# Evaluation comparison", "",
           "Cells: mean over an arm's results (seeds) ± the half-width of its 95% t-interval. Accuracy deltas to "
           f"**{first}**: paired bootstrap over items and seeds (2,000 replicates), 95% percentile interval; `*` "
           "marks an interval that excludes 0.", "", *lines, ""]
    if caveats or notes:
        doc += ["Caveats:", *caveats, *notes, ""]
    return "\n".join(doc)


def _boot_cell(arm: list[dict[str, Any]], base: list[dict[str, Any]], bench: str, caveats: list[str],
               label: str) -> str:
    arm_scores = [_item_scores(r, bench) for r in arm]
    base_scores = [_item_scores(r, bench) for r in base]
    ids = sorted(set.intersection(*(set(s) for s in arm_scores + base_scores))) if arm_scores and base_scores else []
    if not ids or any(len(s) != len(ids) for s in arm_scores + base_scores):
        caveats.append(f"- {label} {bench}: results do not hold the same items, so no paired interval")
        return "–"
    d, lo, hi = paired_bootstrap([[s[i] for i in ids] for s in arm_scores], [[s[i] for i in ids] for s in base_scores])
    star = "*" if significant(lo, hi) else ""
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def _plain_table(args: list[str | Path]) -> str:
    """One column per result and its delta to the first (no grouping, no intervals)."""
    if not args:
        raise CompareError("compare needs at least one eval results file or run folder")
    results = [load_results(a) for a in args]
    labels = _labels(results)
    head = ["metric", labels[0]]
    for lab in labels[1:]:
        head += [lab, f"Δ {lab}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, values in _rows(results):
        cells = [name, _fmt(values[0])]
        for v in values[1:]:
            cells += [_fmt(v), _delta(v, values[0])]
        lines.append("| " + " | ".join(cells) + " |")
    sources = []
    for lab, r in zip(labels, results, strict=True):
        s = r.get("settings", {})
        decoding = "greedy" if s.get("greedy") else f"{s.get('samples')} samples, T={s.get('temperature')}"
        sources.append(f"- **{lab}**: `{r['_path']}` — model `{r.get('model', {}).get('spec')}`, {decoding}, "
                       f"max_new_tokens={s.get('max_new_tokens')}, limit={s.get('limit')}")
    notes = _notes(results, labels)
    doc = ["# Evaluation comparison", "", *sources, "", *lines, ""]
    if len(results) > 1:
        doc.insert(len(sources) + 3, f"Δ columns: difference to the first run ({labels[0]}).\n")
    if notes:
        doc += ["Caveats:", *notes, ""]
    return "\n".join(doc)
