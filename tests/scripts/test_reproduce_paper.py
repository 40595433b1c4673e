"""``scripts/reproduce_paper.sh --dry-run``: the paper's whole pipeline (two trainings, three evaluations, the table and
the report) end to end on a tiny random Llama, then again to check that it resumes instead of redoing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.slow


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, THINKTUNING_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", "scripts/reproduce_paper.sh", "--dry-run", "--out", str(out), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)


def test_dry_run_end_to_end_then_resumes(tmp_path):
    out = tmp_path / "repro"
    extra = ["--data-dir", str(SHARED_DATA)] if SHARED_DATA.is_dir() else []
    first = _run(out, *extra)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ("grpo", "thinktuning"):
        metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2]
        assert (out / name / "checkpoints" / "step-000002").is_dir()
    assert json.loads((out / "grpo" / "run.json").read_text())["teacher"] is None
    assert sum(m["guidance/guided"] for m in map(json.loads, (out / "thinktuning" / "metrics.jsonl").open())) > 0
    evals = {n: json.loads((out / f"eval-{n}.json").read_text()) for n in ("start", "grpo", "thinktuning")}
    assert all("arithmetic" in e["benchmarks"] for e in evals.values())
    if SHARED_DATA.is_dir():  # the paper's benchmarks found locally are evaluated too (2 items each)
        assert "gsm8k" in evals["start"]["benchmarks"]
    table = (out / "compare.md").read_text()
    assert "start" in table and "grpo" in table and "thinktuning" in table and "arithmetic" in table
    assert "thinktuning report" in (out / "report.html").read_text()

    again = _run(out, *extra)  # everything is there: trainings resume at their end, evaluations are kept
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("exists, kept") == 3
    for name in ("grpo", "thinktuning"):
        assert len((out / name / "metrics.jsonl").read_text().splitlines()) == 2


def test_unknown_argument_is_refused():
    bad = subprocess.run(["bash", "scripts/reproduce_paper.sh", "--dry-rn"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--dry-rn'" in bad.stderr
