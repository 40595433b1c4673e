"""The scripted teacher (a research instrument): hand-checked feedback per behaviour, GSM8K cleaning on real rows,
determinism and varied wording, the config guards, and one real training step with it."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from thinktuning.config.load import load_config
from thinktuning.data.arithmetic import make_arithmetic
from thinktuning.data.load import load_examples
from thinktuning.errors import ConfigError
from thinktuning.eval.reflection import detect
from thinktuning.jsonl import read_jsonl
from thinktuning.teacher.base import Teacher, TeacherCase
from thinktuning.teacher.prompt import feedback_text
from thinktuning.teacher.scripted import (
    BEHAVIOURS_BY_CORRECTNESS,
    ScriptedTeacher,
    case_rng,
    clean_solution,
    question_numbers,
    write_feedback,
)

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")

Q = "Maya has 27 apples. She buys 14 more. How many apples does Maya have now?"
SOL = "Maya buys 14 more apples, so 27 + 14 = 41."
WRONG = TeacherCase(Q, "27 + 14 = 31. The answer is \\boxed{31}.", solution=SOL, gold_answer="41",
                    student_correct=False)
RIGHT = TeacherCase(Q, "27 + 14 = 41. The answer is \\boxed{41}.", solution=SOL, gold_answer="41",
                    student_correct=True)


def _tagged(opinion: str, reason: str, phrase: str) -> str:
    return f"<opinion>{opinion}</opinion>\n<reason>{reason}</reason>\n<phrase>{phrase}</phrase>"


# ------------------------------------------------------------------------------------ hand-checked outputs


@pytest.mark.parametrize(("case", "behaviour", "reason", "phrase"), [
    (WRONG, "self-conflict",
     "Let me reread the problem. It gives 27 and 14, and my answer of 31 is inconsistent with it. Redoing the work "
     "with the problem's own numbers: Maya buys 14 more apples, so 27 + 14 = 41.",
     "So the answer is 41, not 31. The final answer is \\boxed{41}."),
    (WRONG, "self-consultation",
     'I can hear my teacher asking: "Did you check where 31 comes from?" Honestly, I cannot defend it. Let me redo '
     "it step by step: Maya buys 14 more apples, so 27 + 14 = 41.",
     "So my answer of 31 was a slip; it is 41. The final answer is \\boxed{41}."),
    (RIGHT, "self-agreement",
     "I want to be certain, so I will go back over the steps. Going through it again: Maya buys 14 more apples, so "
     "27 + 14 = 41. Each step checks out.",
     "My answer stands. The final answer is \\boxed{41}."),
    (RIGHT, "self-critique",
     "My answer happens to be right, but that was sloppy work. Let me be more careful. Here it is step by step: "
     "Maya buys 14 more apples, so 27 + 14 = 41.",
     "Now the answer is justified, not just written down. The final answer is \\boxed{41}."),
])
def test_each_behaviour_hand_checked(case, behaviour, reason, phrase):
    got_behaviour, text = write_feedback(case, random.Random(0), behaviour)
    opinion = "correct" if case.student_correct else "incorrect"
    assert (got_behaviour, text) == (behaviour, _tagged(opinion, reason, phrase))
    # the package's cue detector recognises the behaviour the template claims
    assert detect(reason)[behaviour]


def test_teacher_output_hand_checked_and_shaped_like_any_backend():
    teacher = ScriptedTeacher(seed=0)
    assert isinstance(teacher, Teacher) and teacher.name == "scripted" and teacher.context() is None
    wrong, right = teacher.feedback([WRONG, RIGHT])
    assert wrong.raw == "[scripted: self-consultation]\n" + _tagged(
        "incorrect",
        'I can hear my teacher asking: "Did you check where 31 comes from?" Honestly, I cannot defend it. Let me '
        "redo it step by step: Maya buys 14 more apples, so 27 + 14 = 41.",
        "That settles it: the answer is 41. The final answer is \\boxed{41}.")
    assert right.raw == "[scripted: self-agreement]\n" + _tagged(
        "correct",
        "Let me verify my answer by checking each step. Step by step: Maya buys 14 more apples, so 27 + 14 = 41. "
        "Everything is consistent.",
        "My answer stands. The final answer is \\boxed{41}.")
    assert (wrong.feedback.opinion, right.feedback.opinion) == ("incorrect", "correct")
    assert wrong.error is None and right.error is None
    # what the splice appends: blank line, reason, blank line, phrase
    assert feedback_text(right.feedback) == ("\n\nLet me verify my answer by checking each step. Step by step: Maya "
                                             "buys 14 more apples, so 27 + 14 = 41. Everything is consistent.\n\n"
                                             "My answer stands. The final answer is \\boxed{41}.")


def test_behaviour_follows_correctness_as_in_method():
    assert BEHAVIOURS_BY_CORRECTNESS == {False: ("self-conflict", "self-consultation"),
                                         True: ("self-agreement", "self-critique")}
    with pytest.raises(ValueError, match="does not fit a correct response"):
        write_feedback(RIGHT, random.Random(0), "self-conflict")
    with pytest.raises(ValueError, match="does not fit an incorrect response"):
        write_feedback(WRONG, random.Random(0), "self-agreement")


def test_incorrect_without_a_distinct_wrong_number_asks_instead_of_claiming_a_contradiction():
    # no answer at all, or the right number under a strict reward (not boxed): nothing to contradict
    for response in ("I am not sure how to do this.", "27 + 14 = 41 apples."):
        case = TeacherCase(Q, response, solution=SOL, gold_answer="41", student_correct=False)
        for seed in range(20):
            behaviour, text = write_feedback(case, case_rng(seed, case))
            assert behaviour == "self-consultation"
            assert "my answer of" not in text and "not 41" not in text
            assert detect(text)["self-consultation"]
        with pytest.raises(ValueError, match="self-conflict needs a wrong answer"):
            write_feedback(case, random.Random(0), "self-conflict")


def test_question_numbers_quote_at_most_five_distinct():
    assert question_numbers(Q) == ["27", "14"]
    assert question_numbers("He paid $1,200 for 3 chairs, 3 tables.") == ["1,200", "3"]
    assert question_numbers("1 2 3 4 5 6 7") == ["1", "2", "3", "4", "5"]
    assert question_numbers("three apples") == []


# -------------------------------------------------------------------------------------------- GSM8K


def test_clean_solution_drops_calculator_annotations_and_the_final_line():
    raw = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
           "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market\n#### 18")
    assert clean_solution(raw) == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day "
                                   "at the farmer’s market.")
    assert clean_solution("So  the total is 2+1=<<2+1=3>>3 bolts,\n\n") == "So the total is 2+1=3 bolts."
    assert clean_solution(None) == clean_solution("") == clean_solution("#### 5") == ""


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="GSM8K test copy not present")
def test_gsm8k_rows_raw_and_loaded_give_clean_parseable_feedback(smol_tokenizer):
    rows = [json.loads(line) for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines()[:300]]
    loaded, _ = load_examples("gsm8k", str(GSM8K_TEST.parent), "test", limit=300)
    teacher = ScriptedTeacher(seed=3, tokenizer=smol_tokenizer, max_feedback_tokens=512)
    for i, (row, ex) in enumerate(zip(rows, loaded, strict=True)):
        # the raw answer (annotations and "#### N" included) and data.py's solution clean to the same steps
        assert clean_solution(row["answer"]) == clean_solution(ex.solution)
        for solution in (row["answer"], ex.solution):
            case = TeacherCase(ex.question, f"So the answer is {i + 1000}.", solution=solution,
                               gold_answer=ex.reference, student_correct=bool(i % 2))
            (res,) = teacher.feedback([case])
            assert res.feedback is not None, res.error
            assert "<<" not in res.raw and "####" not in res.raw and ">>" not in res.raw
            assert res.feedback.phrase.endswith(f"The final answer is \\boxed{{{ex.reference}}}.")
    # the first row, read by hand
    first = TeacherCase(loaded[0].question, "She makes 20 dollars.", solution=rows[0]["answer"], gold_answer="18",
                        student_correct=False)
    _, text = write_feedback(first, random.Random(1), "self-conflict")
    assert "gives 16 and 2" in text
    assert ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day at the farmer’s "
            "market.") in text


# ------------------------------------------------------------------- every output, determinism, variety


def _arithmetic_cases(n: int) -> list[TeacherCase]:
    cases = []
    for i, ex in enumerate(make_arithmetic(n, seed=5, levels=(1, 2, 3, 4))):
        correct = i % 3 == 0
        answer = ex.reference if correct else str(int(ex.reference) + 1 + i % 7)
        response = [f"The answer is \\boxed{{{answer}}}.", f"I think it is {answer}", "no idea"][i % 3]
        cases.append(TeacherCase(ex.question, response, solution=ex.solution, gold_answer=ex.reference,
                                 student_correct=correct))
    return cases


def test_every_output_parses_ends_with_the_answer_and_shows_its_behaviour():
    cases = _arithmetic_cases(240)
    results = ScriptedTeacher(seed=11).feedback(cases)
    seen = set()
    for case, res in zip(cases, results, strict=True):
        assert res.feedback is not None and res.error is None
        behaviour = re.match(r"\[scripted: ([a-z-]+)\]\n", res.raw).group(1)
        assert behaviour in BEHAVIOURS_BY_CORRECTNESS[case.student_correct]
        seen.add(behaviour)
        assert res.feedback.opinion == ("correct" if case.student_correct else "incorrect")
        assert res.feedback.phrase.endswith(f"The final answer is \\boxed{{{case.gold_answer}}}.")
        assert clean_solution(case.solution) in res.feedback.reason  # the reason walks through the worked steps
        assert res.feedback.reason.count("\\boxed") == 0  # the only box is the phrase's final one
        assert detect(res.feedback.reason)[behaviour]
    assert seen == {"self-conflict", "self-consultation", "self-agreement", "self-critique"}


def test_deterministic_per_seed_and_case():
    cases = _arithmetic_cases(30)
    a = [r.raw for r in ScriptedTeacher(seed=7).feedback(cases)]
    assert a == [r.raw for r in ScriptedTeacher(seed=7).feedback(cases)]  # a resumed run writes the same words
    assert a == [ScriptedTeacher(seed=7).feedback([c])[0].raw for c in cases]  # independent of batching
    assert a != [r.raw for r in ScriptedTeacher(seed=8).feedback(cases)]


def test_wording_varies_over_seeds():
    for case, behaviours in ((WRONG, {"self-conflict", "self-consultation"}),
                             (RIGHT, {"self-agreement", "self-critique"})):
        raws = [ScriptedTeacher(seed=s).feedback([case])[0].raw for s in range(200)]
        assert len(set(raws)) >= 40
        assert {re.match(r"\[scripted: ([a-z-]+)\]", r).group(1) for r in raws} == behaviours
        openings = {r.split("<reason>")[1].split(".")[0] for r in raws}
        assert len(openings) >= 6  # several openers per behaviour, not one sentence with swapped numbers


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("change", "error"), [
    ({"solution": None}, "no worked solution"),
    ({"solution": "#### 41"}, "no worked solution"),
    ({"gold_answer": None}, "no reference answer"),
    ({"student_correct": None}, "verdict"),
])
def test_unscriptable_case_is_no_feedback_with_a_reason(change, error):
    case = TeacherCase(**{**RIGHT.__dict__, **change})
    (res,) = ScriptedTeacher().feedback([case])
    assert res.feedback is None and error in res.error and res.error.startswith("scripted teacher:")


def test_feedback_the_splice_would_cut_is_refused(smol_tokenizer):
    (ok,) = ScriptedTeacher(tokenizer=smol_tokenizer, max_feedback_tokens=512).feedback([RIGHT])
    assert ok.feedback is not None
    (cut,) = ScriptedTeacher(tokenizer=smol_tokenizer, max_feedback_tokens=20).feedback([RIGHT])
    assert cut.feedback is None and "teacher.max_feedback_tokens=20" in cut.error


def test_config_names_it_a_research_instrument_and_refuses_math():
    cfg = load_config("cpu-scripted")
    assert cfg.teacher.backend == "scripted" and cfg.preset == "cpu-scripted"
    assert cfg.output_dir == "runs/cpu-scripted"
    devs = cfg.deviations()
    assert any("research instrument, not the paper's teacher" in d for d in devs)
    assert not any(d.startswith("teacher.sees_reference") for d in devs)  # it does not apply: not claimed
    # cpu-scripted is cpu-demo with another teacher backend and nothing else
    demo, scripted = load_config("cpu-demo").to_dict(), cfg.to_dict()
    for d in (demo, scripted):
        d.pop("preset"), d.pop("output_dir"), d["teacher"].pop("backend")
    assert demo == scripted
    with pytest.raises(ConfigError, match=r"teacher\.backend=scripted .* data\.name=arithmetic and gsm8k"):
        load_config("cpu-scripted", ["data.name=math", "data.split=test"])
    load_config("cpu-scripted", ["data.name=gsm8k"])
    load_config("cpu-scripted", ["data.name=math", "guidance.enabled=false"])  # no teacher is built


def test_build_teacher_makes_the_scripted_backend(smol_tokenizer):
    from thinktuning.teacher.build import build_teacher, needs_frozen_student

    cfg = load_config("cpu-scripted", ["seed=4"])
    assert not needs_frozen_student(cfg)  # no model is loaded for it
    teacher = build_teacher(cfg, tokenizer=smol_tokenizer, frozen_student=None, device="cpu")
    assert isinstance(teacher, ScriptedTeacher) and teacher.seed == 4 and teacher.context() is None
    assert teacher.max_feedback_tokens == cfg.teacher.max_feedback_tokens


# ------------------------------------------------------------------------- one real step with it


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from tests.train.test_trainer import _tiny_student
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


@pytest.mark.slow
def test_one_training_step_with_the_scripted_teacher(tmp_path, tiny_student):
    from tests.train.test_trainer import _tiny_cfg
    from thinktuning import ThinkTuningTrainer

    cfg = _tiny_cfg(tiny_student, tmp_path / "run", ["teacher.backend=scripted"])
    cfg.max_steps = 1
    trainer = ThinkTuningTrainer(cfg)
    assert isinstance(trainer.teacher.inner, ScriptedTeacher)  # behind the recording cache
    (m,) = trainer.train()
    assert m["guidance/guided"] >= 1 and m["guidance/no_feedback"] == 0
    assert m["guidance/reward_guided"] == 1.0
    guided = [r for r in read_jsonl(tmp_path / "run" / "rollouts.jsonl") if r["guided"]]
    assert len(guided) == m["guidance/guided"]
    for r in guided:
        start, end = r["teacher_span"]
        assert end == len(r["response"])
        teacher_words = r["response"][start:]
        assert teacher_words.endswith(f"The final answer is \\boxed{{{r['reference']}}}.")
        assert r["teacher_raw"].startswith("[scripted: ")
        assert r["opinion"] == ("correct" if r["student_correct"] else "incorrect")
        assert r["reward"] == 1.0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["teacher"] == {"backend": "scripted", "model": None}
    assert any("research instrument" in d for d in info["deviations_from_paper"])
