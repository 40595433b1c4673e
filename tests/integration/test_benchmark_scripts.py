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
        "trl-nogc@bf16": [_row(40, 20, 20), _row(50, 25, 25), _row(45, 20, 25)],
        "tt-grpo-noskip": [_row(10, 8, 2), _row(30, 9, 21), _row(12, 9, 3)],
        "tt-guided": [_row(18, 9, 9)],
        "tt-guided@bf16": [_row(9, 4, 5)],
        "tt-grpo": [],
    })
    assert table["trl"]["step"] == 70 and table["trl-nogc@bf16"]["step"] == 45
    assert table["tt-grpo-noskip"]["update"] == 3 and table["tt-grpo-noskip"]["n"] == 3
    assert "tt-grpo" not in table  # no rows, no line
    st.print_table(table)
    lines = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert lines["tt-grpo-noskip"].startswith("| tt-grpo-noskip | 3 | 12.0 |")
    assert "| 0.27x | 1.00x |" in lines["tt-grpo-noskip"]  # 12 / 45: against TRL's fastest, whatever its precision
    assert "| 0.40x | 1.50x |" in lines["tt-guided"]  # 18 / 45, and 18 / 12: the plain step at the same precision
    assert lines["tt-guided@bf16"].endswith("| 0.20x | - |")  # no bf16 plain step to compare with
    assert "| 1.56x | - |" in lines["trl"]  # 70 / 45


def test_step_time_refuses_an_unknown_variant() -> None:
    st = _module("step_time")
    assert st.split_variant("tt-guided@bf16") == ("tt-guided", True)
    with pytest.raises(SystemExit, match="tt-guidd"):
        st.split_variant("tt-guidd")
    with pytest.raises(SystemExit, match="@fp16"):
        st.split_variant("trl@fp16")


@pytest.mark.slow
def test_rollout_throughput_runs_on_the_embedded_model() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rollout_throughput.py"), "--batches", "2", "--new-tokens", "4",
         "--repeats", "1", "--no-vllm"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    assert "ceiling" in out
    rows = [line for line in out.splitlines() if line.startswith("| thinktuning sample") or line.startswith("| bare")]
    assert len(rows) == 4  # ours, ours under bf16 autocast, ours with the batch kept whole, bare generate
    for row in rows[:3]:
        cells = row.split("|")
        assert float(cells[3]) > 0  # tokens/s
        # the sampler's log-probs agree with the trainer's (in bf16: with its autocast forward, to bf16 rounding)
        assert float(cells[6]) < (0.1 if "bf16" in row else 1e-3)


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
