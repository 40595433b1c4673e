"""The evidence experiment's format rewards (``experiments/format_reward.py``), checked on hand-written answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def fr():
    spec = importlib.util.spec_from_file_location("format_reward", EXPERIMENTS / "format_reward.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("format_reward", module)
    spec.loader.exec_module(module)
    return module


ANSWERS = ["so \\boxed{12}.", "\\boxed{}", "\\boxed{x + 1}", "no box: 12", "first \\boxed{x} then \\boxed{1,000}"]


def test_boxed_number_pays_for_a_plain_number_in_the_last_box(fr):
    assert fr.boxed_number([""] * 5, ANSWERS) == [0.2, 0.0, 0.0, 0.0, 0.2]


def test_question_numbers_are_the_numbers_as_written(fr):
    assert fr.question_numbers("Maya had 29 books, lost 5 and found 2.5 more.") == ["29", "5", "2.5"]


def test_boxed_new_number_refuses_a_number_the_question_states(fr):
    q = "Maya had 29 books but lost 5 of them. How many books does Maya have now?"
    texts = ["\\boxed{29}", "\\boxed{24}", "\\boxed{5.0}", "\\boxed{}", "24"]
    assert fr.boxed_new_number([""] * 5, texts, question=[q] * 5, reference=["24"] * 5) == [0.0, 0.2, 0.0, 0.0, 0.0]


def test_boxed_new_number_reads_each_completion_with_its_own_question(fr):
    out = fr.boxed_new_number(["", ""], ["\\boxed{7}", "\\boxed{7}"], question=["What is 3 + 4?", "What is 7 - 0?"])
    assert out == [0.2, 0.0]


@pytest.mark.parametrize(("step", "scale"), [(0, 1.0), (5, 0.75), (10, 0.5), (20, 0.0), (45, 0.0)])
def test_fading_bonus_falls_linearly_to_zero_over_the_first_third(fr, step, scale):
    state = SimpleNamespace(global_step=step, max_steps=60)
    assert fr.fading_boxed_number([""], ["\\boxed{3}"], trainer_state=state) == [pytest.approx(0.2 * scale)]


def test_fading_bonus_says_what_it_needs_outside_training(fr):
    with pytest.raises(ValueError, match="trainer_state"):
        fr.fading_boxed_number([""], ["\\boxed{3}"])
