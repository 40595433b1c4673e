"""The run folder: resolved config, run metadata, metrics.jsonl, rollouts.jsonl, and the per-step progress line.

A run folder is self-contained so that ``report``/``compare`` (and a human) need nothing else to understand a run.
Only the main process writes here.
"""

from __future__ import annotations

import contextlib
import json
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

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "rollouts.jsonl")



def check_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise RunFolderError if the folder cannot be used as asked (without changing anything)."""
    run = Path(path)
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"output path {run} is a file, not a folder; choose another --output-dir")
    exists = run.exists() and any(run.iterdir())
    is_run = (run / "config.yaml").is_file()
    if exists and not (resume or overwrite):
        what = "a previous run" if is_run else "other files"
        raise RunFolderError(
            f"output folder {run} already holds {what}. Add --resume to continue it, --overwrite to replace it, "
            "or choose another --output-dir"
        )
    if exists and overwrite and not resume and not is_run:
        raise RunFolderError(
            f"--overwrite refused: {run} is not a thinktuning run folder (no config.yaml); remove it yourself "
            "or choose another --output-dir"
        )


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse the output folder, refusing to mix two runs in one folder."""
    check_run_dir(path, resume=resume, overwrite=overwrite)
    run = Path(path)
    if run.exists() and any(run.iterdir()) and overwrite and not resume:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("thinktuning", "torch", "transformers", "accelerate", "datasets", "math-verify"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_run_header(run: Path, cfg: ThinkTuningConfig, extra: dict[str, Any]) -> None:
    """config.yaml (the resolved config) and run.json (versions, deviations from the paper, data stats)."""
    save_config(cfg, run / "config.yaml")
    info = {
        "preset": cfg.preset,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "deviations_from_paper": cfg.deviations(),
        "versions": package_versions(),
        **extra,
    }
    (run / "run.json").write_text(json.dumps(info, indent=2, default=str))


def progress_line(m: dict[str, Any], total: int, eta_s: float | None) -> str:
    eta = f"{eta_s / 60:.1f}min" if eta_s is not None else "?"
    return (
        f"step {m['step']}/{total} | reward {m['reward/mean']:.3f} | acc {m['accuracy']:.3f} | "
        f"guided {m['guidance/guided']} (no feedback {m['guidance/no_feedback']}) | loss {m['loss']:+.4f} | "
        f"gnorm {m['grad_norm']:.3f} | {m['time/step']:.1f}s | eta {eta}"
    )
