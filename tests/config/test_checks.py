"""Range and cross-field checks, and the context-length arithmetic (``thinktuning.config.checks``)."""

from __future__ import annotations

import dataclasses

import pytest

from thinktuning import load_config
from thinktuning.config.checks import SCRIPTED_DATASETS, check_context_lengths, validate
from thinktuning.errors import ConfigError


def test_context_check_arithmetic():
    cfg = load_config("cpu-demo")  # 192 + 96 + 512 = 800 for the student
    check_context_lengths(cfg, 800, None)
    with pytest.raises(ConfigError, match="= 800 tokens"):
        check_context_lengths(cfg, 799, None)
    check_context_lengths(cfg, None, None)  # unknown limits are not checked
    cfg = load_config("cpu-demo", ["guidance.continuation=student"])  # the student writes a second response
    with pytest.raises(ConfigError, match=r"\+ rollout.max_new_tokens \(96\) = 896 tokens"):
        check_context_lengths(cfg, 800, None)
    cfg = load_config("cpu-demo")  # teacher: 1000 + 192 + 96 + 40 + 40 + 64 tags = 1432
    check_context_lengths(cfg, 8192, 1432, teacher_prompt_tokens=1000)
    with pytest.raises(ConfigError, match=r"teacher\.max_phrase_tokens \(40\) \+ tags \(64\) = 1432 tokens"):
        check_context_lengths(cfg, 8192, 1431, teacher_prompt_tokens=1000)
    for name in ("cpu-demo", "grpo-baseline"):  # the shipped CPU presets fit the embedded model (8192 positions)
        check_context_lengths(load_config(name), 8192, 8192, teacher_prompt_tokens=1100)


def test_validate_names_the_field_and_the_allowed_range():
    cfg = load_config("cpu-demo")
    validate(cfg)  # the shipped preset passes
    bad = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, group_size=1))
    with pytest.raises(ConfigError, match=r"^rollout\.group_size must be >= 2"):
        validate(bad)


def test_mini_batches_must_divide_the_prompts_of_a_step():
    cfg = load_config("cpu-demo", ["rollout.prompts_per_step=4"])
    validate(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, mini_batch_prompts=2)))
    with pytest.raises(ConfigError, match=r"optim\.mini_batch_prompts=3 must divide rollout\.prompts_per_step=4"):
        validate(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, mini_batch_prompts=3)))


def test_the_scripted_teacher_needs_a_task_with_worked_steps():
    cfg = load_config("cpu-scripted")
    assert cfg.teacher.backend == "scripted" and cfg.data.name in SCRIPTED_DATASETS
    with pytest.raises(ConfigError, match=r"teacher\.backend=scripted writes its feedback"):
        validate(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="math")))
