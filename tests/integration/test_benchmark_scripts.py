"""benchmarks/step_time.py, rollout_throughput.py and compaction.py: their arithmetic on hand-made rows, and real
tiny runs.

The scripts measure speed; these tests only keep them working (speed targets are never asserted in tests)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(step: float, gen: float, upd: float) -> dict:
    return {"step": step, "student_generate": gen, "teacher_generate": 0.0, "logprobs": 0.0, "update": upd,
            "other": step - gen - upd}


def test_step_time_takes_medians_per_variant_and_ratios_against_the_faster_trl(capsys) -> None:
    st = _module("step_time")
    table = st.summarize({
        "trl": [_row(60, 30, 30), _row(70, 30, 40), _row(80, 30, 50)],
        "trl-nogc": [_row(40, 20, 20), _row(50, 25, 25), _row(45, 20, 25)],
        "tt-grpo": [_row(10, 8, 2), _row(30, 9, 21), _row(12, 9, 3)],
        "tt-guided": [],
    })
    assert table["trl"]["step"] == 70 and table["trl-nogc"]["step"] == 45 and table["tt-grpo"]["step"] == 12
    assert table["tt-grpo"]["update"] == 3 and table["tt-grpo"]["n"] == 3
    assert "tt-guided" not in table  # no rows, no line
    st.print_table(table)
    out = capsys.readouterr().out
    assert "| tt-grpo | 3 | 12.0 |" in out
    assert "0.27x" in out  # 12 / 45: against the faster TRL variant
    assert "3.75x" in out  # 45 / 12


@pytest.mark.slow
def test_rollout_throughput_runs_on_the_embedded_model() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rollout_throughput.py"), "--batches", "2", "--new-tokens", "4",
         "--repeats", "1", "--no-vllm"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    assert "ceiling" in out
    rows = [line for line in out.splitlines() if line.startswith("| thinktuning sample") or line.startswith("| bare")]
    assert len(rows) == 3  # ours, ours with the batch kept whole, bare generate
    for row in rows[:2]:
        cells = row.split("|")
        assert float(cells[3]) > 0  # tokens/s
        assert float(cells[6]) < 1e-3  # the sampler's log-probs agree with the trainer's


@pytest.mark.slow
def test_compaction_benchmark_runs_and_both_variants_write_the_same_tokens() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compaction.py"), "--batches", "3", "--new-tokens", "6",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 1
    assert float(rows[0][2]) > 0 and float(rows[0][3]) > 0
    assert rows[0][5].strip() == "yes"
