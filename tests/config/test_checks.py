"""Range and cross-field checks, and the context-length arithmetic (``thinktuning.config.checks``)."""

from __future__ import annotations

import dataclasses

import pytest

from thinktuning import load_config
from thinktuning.config.checks import SCRIPTED_DATASETS, check_context_lengths, dead_settings, validate
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


# ------------------------------------------------------------------- settings that something else makes do nothing


def test_the_shipped_presets_have_no_dead_settings():
    for name in ("cpu-demo", "cpu-scripted", "grpo-baseline", "paper-3b"):
        assert dead_settings(load_config(name)) == [], name


@pytest.mark.parametrize(
    ("dead", "fixed", "message"),
    [
        # the threshold is p_end + cutoff_epsilon = 0.05 + 0.05 = 0.10: p = 0.05 is off from step 0
        (["guidance.schedule=constant", "guidance.p_start=0.05", "guidance.p_end=0.05"],
         ["guidance.schedule=constant", "guidance.p_start=0.05", "guidance.p_end=0.05", "guidance.cutoff_epsilon=null"],
         "guidance.p_start=0.05 is at or below the cutoff guidance.p_end + guidance.cutoff_epsilon = 0.1, so guidance "
         "switches off before the first step and no rollout is ever guided, although guidance is on (the constant "
         "schedule keeps p at p_start, and the cutoff still compares it with p_end + cutoff_epsilon). Raise "
         "guidance.p_start above 0.1, set guidance.cutoff_epsilon=null (no cutoff), or set guidance.enabled=false for "
         "plain GRPO"),
        (["guidance.p_start=0.06"], ["guidance.p_start=0.07"], "guidance.p_start=0.06 is at or below the cutoff "
         "guidance.p_end + guidance.cutoff_epsilon = 0.06,"),  # linear, exactly at the threshold 0.01 + 0.05
        (["guidance.p_start=0.02", "guidance.p_end=0.3"], ["guidance.p_start=0.4", "guidance.p_end=0.3"],
         "guidance.p_start=0.02 is at or below the cutoff"),  # a rising schedule stays under p_end + epsilon
        (["guidance.cutoff_epsilon=null", "guidance.p_start=0", "guidance.p_end=0"],
         ["guidance.cutoff_epsilon=null", "guidance.p_start=0", "guidance.p_end=0.25"],
         "guidance.p_start=0 and guidance.p_end=0 (schedule linear) make p = 0 at every step"),
        # k = max(0, floor(4 x 0.10)) = 0 in every group; from p = 1/4 on, k = 1
        (["guidance.min_per_group=0"], ["guidance.min_per_group=0", "guidance.p_start=0.25"],
         "guidance.min_per_group=0 and p at most 0.1 guide floor(rollout.group_size 4 x p) = 0 rollouts per group at "
         "every step, so no rollout is ever guided, although guidance is on. Set guidance.min_per_group=1, raise "
         "guidance.p_start to at least 1/4 = 0.25, or set guidance.enabled=false for plain GRPO"),
        (["guidance.mask_scope=teacher", "loss.shaping=none"], ["guidance.mask_scope=teacher", "loss.shaping=luffy"],
         "guidance.mask_scope=teacher picks which tokens get the shaped objective, but loss.shaping=none shapes no "
         "token"),
        (["teacher.base_url=http://user:secret@127.0.0.1:8000/v1", "teacher.api=chat"],
         ["teacher.base_url=http://127.0.0.1:8000/v1", "teacher.api=chat", "teacher.backend=http"],
         "teacher.base_url and teacher.api=chat apply to teacher.backend=http only; with teacher.backend=model no "
         "server is asked. Set teacher.backend=http to use the server, or remove them"),
        (["optim.warmup_steps=5"], ["optim.warmup_steps=5", "optim.lr_scheduler=linear"],
         "optim.warmup_steps=5 does nothing with optim.lr_scheduler=constant (that schedule has no warmup)"),
        (["epochs=3"], ["epochs=3", "max_steps=null"],  # cpu-demo sets max_steps: 12
         "epochs=3 does nothing: max_steps=12 sets the run's length"),
        (["rollout.vllm_sleep=true"], ["rollout.vllm_sleep=false"],
         "rollout.vllm_sleep=true applies to rollout.backend=vllm only; with rollout.backend=transformers rollouts are "
         "sampled in this process. Set rollout.backend=vllm, or remove it"),
        (["rollout.vllm_mode=server", "rollout.vllm_sleep=true"], ["rollout.vllm_mode=colocate"],
         "rollout.vllm_mode=server and rollout.vllm_sleep=true apply to rollout.backend=vllm only"),
    ],
)
def test_a_setting_that_another_makes_do_nothing_is_refused_at_start(dead, fixed, message):
    with pytest.raises(ConfigError) as info:
        load_config("cpu-demo", dead)
    assert str(info.value).startswith(message)
    assert "secret" not in str(info.value)  # a URL's password is never echoed
    load_config("cpu-demo", fixed)  # the fix the message names is accepted


def test_guidance_off_leaves_its_settings_alone():
    """The plain-GRPO baseline keeps the other settings of the run it is compared with, dead or not."""
    load_config("grpo-baseline", ["guidance.min_per_group=0", "guidance.mask_scope=teacher", "loss.shaping=none",
                                  "teacher.base_url=http://127.0.0.1:8000/v1"])
