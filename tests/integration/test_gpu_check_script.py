"""benchmarks/gpu_check.sh: its agreement checks on hand-made runs, and a real --dry-run on CPU (a tiny Qwen2)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(backend: str = "vllm", **step) -> dict:
    metrics = {"step": 1, "loss": 0.1, "grad_norm": 0.5, "response_length/mean": 4.0, "time/student_generate": 2.0,
               "time/step": 3.0, "rollout/logprob_abs_diff": 0.01, "time/weight_push": 0.2, **step}
    rollouts = [
        {"step": 1, "index": 0, "response_tokens": 8, "guided": False, "finished": False, "teacher_span": None},
        {"step": 1, "index": 1, "response_tokens": 5, "guided": False, "finished": True, "teacher_span": None},
    ]
    return {"backend": backend, "history": [metrics], "rollouts": rollouts, "n_seq": 2, "max_new_tokens": 8,
            "max_feedback_tokens": 16, "engine_start_s": 30.0, "device": "cuda:0"}


def test_check_passes_a_consistent_run_and_names_each_problem() -> None:
    check = _module().check
    assert check(_run(), logprob_tol=0.05) == []
    assert check(_run("transformers", **{"rollout/logprob_abs_diff": None}), 0.05) == []  # not asked of it
    assert any("loss=nan" in p for p in check(_run(loss=math.nan), 0.05))
    assert any("logprob diff" in p for p in check(_run(**{"rollout/logprob_abs_diff": 0.2}), 0.05))
    assert any("weight push" in p for p in check(_run(**{"time/weight_push": 0.0}), 0.05))
    bad = _run()
    bad["rollouts"][0]["teacher_span"] = [3, 9]  # teacher tokens in an unguided rollout
    bad["rollouts"][1]["finished"], bad["rollouts"][1]["response_tokens"] = False, 5  # cut early, not finished
    problems = check(bad, 0.05)
    assert len(problems) == 2 and "unguided" in problems[0] and "shorter" in problems[1]


def test_table_reports_tokens_per_second() -> None:
    out = _module().table([_run()])
    header, row = out.splitlines()
    assert "rollout tok/s" in header
    assert row.split()[:4] == ["vllm", "cuda:0", "1", "4"]  # 4 tokens x 2 rollouts / 2 s


@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path) -> None:
    """The whole script on a tiny random Qwen2, transformers backend plain, with gradient checkpointing and under FSDP2
    on one process (vLLM's dry run: under .venv-vllm)."""
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--backends", "transformers,transformers-gc,transformers-fsdp",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "gpu_check: OK (transformers, transformers-gc, transformers-fsdp" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("transformers")]
    assert [r[0] for r in rows] == ["transformers", "transformers-gc", "transformers-fsdp"]
    assert all(float(r[-1]) > 0 for r in rows)  # peak GB
    config = yaml.safe_load((tmp_path / "transformers-gc" / "config.yaml").read_text())
    assert config["model"]["gradient_checkpointing"] is True
    assert (tmp_path / "qwen2-random" / "config.json").is_file()
