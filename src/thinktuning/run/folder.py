"""The run folder: resolved config, run metadata, metrics.jsonl, rollouts.jsonl, and the per-step progress line.

A run folder is self-contained so that ``report``/``compare`` (and a human) need nothing else to understand a run.
Only the main process writes here. It is marked at creation by ``run.json`` (``"tool": "thinktuning"``), so that
``--overwrite`` and ``--resume`` recognise a run, even one killed before its first step, and never mistake a
project folder that happens to hold a ``config.yaml`` for one. ``--overwrite`` deletes only a run's own files
(:data:`RUN_FILES`, :data:`RUN_FOLDERS`), a symlink as a link (never its target), and never the current folder,
one of its ancestors, the home folder or ``/``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from thinktuning.config.load import save_config
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import RunFolderError
from thinktuning.secrets import scrub_tree, strip_userinfo

log = logging.getLogger(__name__)

TOOL = "thinktuning"
MARKER = "run.json"
RUN_FILES = ("config.yaml", MARKER, "metrics.jsonl", "rollouts.jsonl", "teacher_cache*.jsonl", "report.html",
             "eval.json", "reflection.json", "eval_results*.json", ".eval_results*.json.tmp-*", ".eval.json.tmp-*")
"""Files a run (training, ``report``, ``eval``) writes at its top level; glob patterns allowed."""
RUN_FOLDERS = ("checkpoints", "tensorboard", "wandb", "hub-upload")
"""Folders a run writes: its checkpoints and the trackers' local logs."""


def tool_version() -> str:
    """The installed version, recorded in the marker so a later version can tell which one wrote a run."""
    try:
        return metadata.version(TOOL)
    except metadata.PackageNotFoundError:
        return "unknown"


def read_marker(run: Path) -> dict[str, Any] | None:
    """``run.json`` when it is this tool's: marked (``"tool": "thinktuning"``), or a header of an earlier version
    (``versions`` with ``deviations_from_paper`` or ``config``). None otherwise (absent, unreadable, foreign)."""
    try:
        info = json.loads((run / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    legacy = isinstance(info.get("versions"), dict) and ("deviations_from_paper" in info or "config" in info)
    return info if info.get("tool") == TOOL or legacy else None


def is_run_folder(run: Path) -> bool:
    """Whether ``run`` is a folder this tool made (the only kind ``--overwrite`` may empty)."""
    return run.is_dir() and read_marker(run) is not None


def write_marker(run: Path) -> None:
    """Mark a new run folder as this tool's before anything else is written (``write_run_header`` replaces it)."""
    info = {"tool": TOOL, "version": tool_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (run / MARKER).write_text(json.dumps(info, indent=2))


def is_own_entry(entry: Path) -> bool:
    """Whether a top-level entry of a run folder is one the run wrote (a symlink counts by its name only)."""
    link = entry.is_symlink()
    if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in RUN_FILES):
        return link or entry.is_file()
    return entry.name in RUN_FOLDERS and (link or entry.is_dir())


def foreign_entries(run: Path) -> list[str]:
    """Names of the top-level entries that a run did not write, sorted."""
    return sorted(p.name for p in run.iterdir() if not is_own_entry(p))


def protected_reason(path: Path, cwd: Path, home: Path) -> str | None:
    """Why ``path`` must never be deleted whatever it holds (the current folder, one of its ancestors, the home
    folder, the root), or None. Compared after resolving symlinks, so a link to one of them is refused too."""
    if str(path) == ".":
        return "the current folder ('.')"
    target, here = path.resolve(), cwd.resolve()
    if target == Path(target.anchor):
        return "the root folder"
    if target == here:
        return "the current folder"
    if target in here.parents:
        return "an ancestor of the current folder"
    if target == home.resolve():
        return "your home folder"
    return None


def _only_marker(run: Path) -> bool:
    """A folder holding nothing but the creation marker: a run that stopped before writing anything."""
    if [p.name for p in run.iterdir()] != [MARKER]:
        return False
    marker = read_marker(run)
    return marker is not None and set(marker) <= {"tool", "version", "created"}


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise RunFolderError if the folder cannot be used as asked (without changing anything)."""
    run = Path(path)
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"output path {run} is a file, not a folder; choose another --output-dir")
    exists = run.exists() and any(run.iterdir()) and not _only_marker(run)
    if not exists:
        return
    is_run = is_run_folder(run)
    if resume and not is_run:
        raise RunFolderError(
            f"--resume refused: {run} is not a thinktuning run folder (it holds files but no run.json written by "
            "thinktuning); check --output-dir"
        )
    if resume:
        return
    if not overwrite:
        if is_run:
            raise RunFolderError(
                f"output folder {run} already holds a previous run. Add --resume to continue it, --overwrite to "
                "replace it, or choose another --output-dir"
            )
        raise RunFolderError(
            f"output folder {run} already holds other files (no run.json written by thinktuning, so neither --resume "
            "nor --overwrite applies); choose another --output-dir"
        )
    _check_overwrite(run)


def _check_overwrite(run: Path) -> None:
    reason = protected_reason(run, Path.cwd(), Path.home())
    if reason is not None:
        raise RunFolderError(f"--overwrite refused: {run} is {reason}, which is never deleted; choose another "
                             "--output-dir, e.g. runs/x")
    if not is_run_folder(run):
        raise RunFolderError(
            f"--overwrite refused: {run} is not a thinktuning run folder (no run.json written by thinktuning); "
            "remove it yourself or choose another --output-dir"
        )
    foreign = foreign_entries(run)
    if foreign:
        raise RunFolderError(
            f"--overwrite refused: {run} is a thinktuning run but also holds files it did not write "
            f"({_names(foreign)}); --overwrite deletes only a run's own files. Move those away, or choose another "
            "--output-dir"
        )


def remove_run_files(run: Path) -> None:
    """Delete a run's own entries (check first: :func:`check_run_dir`). A symlink is unlinked, never followed; the
    run folder itself stays."""
    for entry in run.iterdir():
        if not is_own_entry(entry):
            continue
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)  # does not follow symlinks inside: they are unlinked


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse the output folder, refusing to mix two runs in one folder, and mark it as a run."""
    check_run_dir(path, resume=resume, overwrite=overwrite)
    run = Path(path)
    if resume and not run.exists():
        log.warning("--resume: %s does not exist; starting a new run from step 0", run)
    if run.exists() and overwrite and not resume:
        remove_run_files(run)
    run.mkdir(parents=True, exist_ok=True)
    if read_marker(run) is None:
        write_marker(run)
    return run


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("thinktuning", "torch", "transformers", "accelerate", "datasets", "math-verify"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_run_header(run: Path, cfg: ThinkTuningConfig, extra: dict[str, Any]) -> None:
    """config.yaml (the resolved config) and run.json (the marker, versions, deviations from the paper, data
    stats); URLs in either are written without their ``user:pass@``."""
    save_config(cfg, run / "config.yaml")
    info = {
        "tool": TOOL,
        "version": tool_version(),
        "preset": cfg.preset,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "deviations_from_paper": cfg.deviations(),
        "versions": package_versions(),
        **extra,
    }
    text = json.dumps(info, indent=2, default=str)
    (run / MARKER).write_text(json.dumps(scrub_tree(json.loads(text), strip_userinfo), indent=2))


def progress_line(m: dict[str, Any], total: int, eta_s: float | None) -> str:
    eta = f"{eta_s / 60:.1f}min" if eta_s is not None else "?"
    return (
        f"step {m['step']}/{total} | reward {m['reward/mean']:.3f} | acc {m['accuracy']:.3f} | "
        f"guided {m['guidance/guided']} (no feedback {m['guidance/no_feedback']}) | loss {m['loss']:+.4f} | "
        f"gnorm {m['grad_norm']:.3f} | {m['time/step']:.1f}s | eta {eta}"
    )
