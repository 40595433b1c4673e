"""Config presets, ``--set`` overrides, type coercion and range validation, with the messages users see."""

from __future__ import annotations

import pytest

from thinktuning.config.load import load_config, preset_names
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError

# ------------------------------------------------------------------------------------------------- presets

PRESETS = ["cpu-demo", "cpu-expert", "cpu-hint", "cpu-refine", "cpu-scripted", "grpo-baseline", "paper-3b"]


def test_preset_names_are_the_shipped_presets() -> None:
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_records_its_name(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, ThinkTuningConfig)
    assert cfg.preset == name
    assert cfg.output_dir == f"runs/{name}"


def test_default_config_is_cpu_demo() -> None:
    assert load_config(None).to_dict() == load_config("cpu-demo").to_dict()


def test_cpu_demo_values_from_its_yaml() -> None:
    cfg = load_config("cpu-demo")
    assert cfg.max_steps == 12
    assert cfg.save_every == 6
    assert cfg.rollout.prompts_per_step == 4
    assert cfg.rollout.group_size == 4
    assert cfg.rollout.max_new_tokens == 96
    assert cfg.teacher.sees_reference == "solution"
    assert cfg.teacher.repetition_penalty == 1.1
    assert cfg.reward.answer_fallback == "last_number"
    assert cfg.optim.lr == 1e-5
    assert cfg.guidance.enabled is True


def test_paper_preset_matches_the_recipe_numbers() -> None:
    # docs/method.md: 128 prompts x G=5, PPO mini-batch 32, lengths 512/1024, lr 1e-6, wd 0.01, clip 0.2,
    # p 0.1 -> 0.01
    cfg = load_config("paper-3b")
    assert cfg.model.student == "meta-llama/Llama-3.2-3B-Instruct"
    assert cfg.model.dtype == "bfloat16"
    assert cfg.model.require_gpu is True
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size) == (128, 5)
    assert cfg.optim.mini_batch_prompts == 32
    assert (cfg.rollout.max_prompt_length, cfg.rollout.max_new_tokens) == (512, 1024)
    assert cfg.teacher.max_feedback_tokens == 512
    assert cfg.teacher.sees_reference == "none"
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.max_grad_norm) == (1e-6, 0.01, 1.0)
    assert (cfg.loss.clip_low, cfg.loss.clip_high, cfg.loss.kl_coef) == (0.2, 0.2, 0.0)
    assert (cfg.guidance.p_start, cfg.guidance.p_end, cfg.guidance.cutoff_epsilon) == (0.10, 0.01, 0.05)
    assert cfg.guidance.decay_fraction == pytest.approx(1 / 3, abs=1e-9)
    assert cfg.guidance.mask_scope == "rollout"
    assert cfg.loss.shaping == "aas"


def test_grpo_baseline_differs_from_cpu_demo_only_in_guidance_and_name() -> None:
    demo = load_config("cpu-demo").to_dict()
    base = load_config("grpo-baseline").to_dict()
    assert base["guidance"]["enabled"] is False
    assert demo["guidance"]["enabled"] is True
    assert (base["preset"], base["output_dir"]) == ("grpo-baseline", "runs/grpo-baseline")
    for d in (demo, base):
        d["guidance"]["enabled"] = None
        d["preset"] = None
        d["output_dir"] = None
    assert base == demo


# ----------------------------------------------------------------------------------------------- overrides


def test_set_overrides_of_each_kind() -> None:
    cfg = load_config(
        None, ["rollout.group_size=5", "loss.shaping=luffy", "data.levels=1,2", "teacher.model=foo"]
    )
    assert cfg.rollout.group_size == 5
    assert cfg.loss.shaping == "luffy"
    assert cfg.data.levels == [1, 2]
    assert cfg.teacher.model == "foo"
    # untouched fields keep the preset's values
    assert cfg.rollout.prompts_per_step == 4
    assert cfg.preset == "cpu-demo"


def test_set_int_list_as_yaml_list_or_single_value() -> None:
    assert load_config(None, ["data.levels=[3, 4]"]).data.levels == [3, 4]
    assert load_config(None, ["data.levels=2"]).data.levels == [2]


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("data.levels=[1,", "while parsing a flow node: expected the node content, but found '<stream end>'"),
        ("data.levels=[1, 2", "while parsing a flow sequence: expected ',' or ']', but got '<stream end>'"),
        ("report_to={tensorboard", "while parsing a flow mapping: expected ',' or '}', but got '<stream end>'"),
    ],
)
def test_set_a_broken_yaml_list_names_the_field_and_the_yaml_problem(item, problem) -> None:
    key = item.split("=", 1)[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert str(info.value) == (f"--set {item}: not valid YAML ({problem}). Write a list as {key}=[1,2] or {key}=1,2 "
                               "(quote the whole --set argument in the shell)")


def test_set_a_comma_list_item_that_is_not_yaml_is_a_type_error() -> None:
    with pytest.raises(ConfigError, match=r"^data\.levels must be int, got '\[2'$"):  # the item, not a traceback
        load_config(None, ["data.levels=1,[2"])


def test_set_comma_separated_str_list() -> None:
    cfg = load_config(None, ["reward.functions=a.b:f, c.d:g"])
    assert cfg.reward.functions == ["a.b:f", "c.d:g"]


def test_set_value_may_contain_equals_sign() -> None:
    cfg = load_config(None, ["teacher.model=./models/a=b"])
    assert cfg.teacher.model == "./models/a=b"


def test_set_int_into_float_field_and_null_into_optional() -> None:
    cfg = load_config(None, ["rollout.temperature=2", "guidance.cutoff_epsilon=null", "model.cache_dir=none"])
    assert cfg.rollout.temperature == 2.0
    assert isinstance(cfg.rollout.temperature, float)
    assert cfg.guidance.cutoff_epsilon is None
    assert cfg.model.cache_dir is None


def test_set_bool_field() -> None:
    assert load_config(None, ["guidance.enabled=false"]).guidance.enabled is False
    assert load_config("grpo-baseline", ["guidance.enabled=true"]).guidance.enabled is True


def test_set_string_field_keeps_the_text_as_typed() -> None:
    assert load_config(None, ["output_dir=2025-01-15"]).output_dir == "2025-01-15"


def test_set_without_equals_sign_is_explained() -> None:
    with pytest.raises(ConfigError, match=r"key=value.*'rollout'"):
        load_config(None, ["rollout"])


def test_set_on_a_section_is_explained() -> None:
    with pytest.raises(ConfigError, match=r"'rollout' is a section"):
        load_config(None, ["rollout=3"])


def test_unknown_field_suggests_nearest_name() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.grup_size=5"])
    message = str(info.value)
    assert "unknown config field 'rollout.grup_size'" in message
    assert "Did you mean 'rollout.group_size'?" in message


def test_unknown_top_level_field_suggests_nearest_name() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'max_steps'\?"):
        load_config(None, ["max_step=3"])


def test_wrong_type_int_names_field_and_type() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.group_size=abc"])
    assert str(info.value) == "rollout.group_size must be int, got 'abc'"


def test_float_where_int_expected_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"rollout.group_size must be int, got 5.5"):
        load_config(None, ["rollout.group_size=5.5"])


def test_wrong_type_bool_names_field_and_type() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["guidance.enabled=maybe"])
    assert str(info.value) == "guidance.enabled must be bool, got 'maybe'"


def test_wrong_type_float_names_field() -> None:
    with pytest.raises(ConfigError, match=r"^rollout.temperature must be float, got 'hot'$"):
        load_config(None, ["rollout.temperature=hot"])


def test_null_into_non_optional_field_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^rollout.group_size must be int, got None$"):
        load_config(None, ["rollout.group_size=null"])


def test_literal_out_of_range_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["loss.shaping=foo"])
    message = str(info.value)
    assert message.startswith("loss.shaping must be one of ")
    for allowed in ("'aas'", "'aas-recipe'", "'luffy'", "'none'"):
        assert allowed in message
    assert message.endswith("got 'foo'")


def test_optional_int_describes_both_alternatives() -> None:
    with pytest.raises(ConfigError, match=r"^optim.mini_batch_prompts must be int or null, got 'x'$"):
        load_config(None, ["optim.mini_batch_prompts=x"])


# -------------------------------------------------------------------------------------------- range checks


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.group_size=1", "rollout.group_size must be >= 2"),
        ("rollout.top_p=0", r"rollout.top_p must be in \(0, 1\]"),
        ("rollout.top_p=1.01", r"rollout.top_p must be in \(0, 1\]"),
        ("rollout.temperature=0", "rollout.temperature must be > 0"),
        ("guidance.p_start=1.5", r"guidance.p_start must be in \[0, 1\]"),
        ("guidance.p_end=-0.1", r"guidance.p_end must be in \[0, 1\]"),
        ("guidance.decay_fraction=0", r"guidance.decay_fraction must be in \(0, 1\]"),
        ("guidance.cutoff_epsilon=-0.01", "guidance.cutoff_epsilon must be >= 0 or null"),
        ("loss.clip_low=1.0", r"loss.clip_low must be in \[0, 1\)"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("keep_last=0", "keep_last must be >= 1"),
        ("max_steps=0", "max_steps must be >= 1 or null"),
        ("data.levels=[1,5]", "data.levels must be a non-empty list of levels in 1..4"),
        ("data.levels=[]", "data.levels must be a non-empty list of levels in 1..4"),
    ],
)
def test_range_checks_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_mini_batch_must_divide_prompts_per_step() -> None:
    # cpu-demo: 4 prompts per step; 3 does not divide 4
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.mini_batch_prompts=3"])
    assert "optim.mini_batch_prompts=3 must divide rollout.prompts_per_step=4" in str(info.value)
    assert load_config(None, ["optim.mini_batch_prompts=2"]).optim.mini_batch_prompts == 2


def test_boundary_values_are_accepted() -> None:
    cfg = load_config(
        None, ["rollout.group_size=2", "rollout.top_p=1", "guidance.p_start=0", "guidance.decay_fraction=1",
               "guidance.cutoff_epsilon=null"]  # with the cutoff, p_start=0 would never guide (test_checks)
    )
    assert (cfg.rollout.group_size, cfg.rollout.top_p) == (2, 1.0)
    assert (cfg.guidance.p_start, cfg.guidance.decay_fraction) == (0.0, 1.0)


# ----------------------------------------------------------------------------------------------- YAML files


def test_yaml_file_is_loaded_over_defaults(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 11\nrollout:\n  group_size: 6\n  temperature: 0.7\nloss:\n  shaping: luffy\n")
    cfg = load_config(str(path))
    assert cfg.seed == 11
    assert cfg.rollout.group_size == 6
    assert cfg.rollout.temperature == 0.7
    assert cfg.loss.shaping == "luffy"
    # fields the file does not mention keep the dataclass defaults (not cpu-demo's values)
    assert cfg.rollout.prompts_per_step == 4
    assert cfg.rollout.max_new_tokens == 128
    assert cfg.teacher.sees_reference == "none"
    # a file is not a preset: nothing to record unless the file says so
    assert cfg.preset is None


def test_yaml_file_then_set_override(tmp_path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text("rollout:\n  group_size: 6\n")
    assert load_config(str(path), ["rollout.group_size=3"]).rollout.group_size == 3


def test_empty_yaml_file_gives_defaults(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(str(path)).to_dict() == ThinkTuningConfig().to_dict()


def test_yaml_file_with_unknown_field(tmp_path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("rollout:\n  grup_size: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config field 'rollout.grup_size'"):
        load_config(str(path))


def test_yaml_file_with_wrong_type(tmp_path) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text("guidance:\n  enabled: sometimes\n")
    with pytest.raises(ConfigError, match=r"^guidance.enabled must be bool, got 'sometimes'$"):
        load_config(str(path))


def test_malformed_yaml_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rollout: [unclosed\n  group_size: 5\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML"):
        load_config(str(path))


def test_non_mapping_yaml_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"must be a mapping of config fields, got list"):
        load_config(str(path))


def test_missing_yaml_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml.* not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_unknown_preset_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("cpu-dem")
    message = str(info.value)
    assert "unknown config preset 'cpu-dem'" in message
    assert "Did you mean 'cpu-demo'?" in message
    assert "cpu-demo, cpu-expert, cpu-hint, cpu-refine, cpu-scripted, grpo-baseline, paper-3b" in message


def test_unknown_preset_without_close_match_lists_presets() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert f"Presets: {', '.join(PRESETS)}" in str(info.value)


# ------------------------------------------------------------------------------------ deviations and kwargs


def test_paper_preset_has_no_deviations() -> None:
    assert load_config("paper-3b").deviations() == []


def test_cpu_demo_deviations() -> None:
    devs = load_config("cpu-demo").deviations()
    assert len(devs) == 2
    assert devs[0].startswith("teacher.sees_reference=solution:")
    assert devs[1].startswith("reward.answer_fallback=last_number:")


def test_baseline_without_guidance_does_not_report_teacher_settings() -> None:
    # the teacher is never asked when guidance is off, so what it would see is no deviation
    devs = load_config("grpo-baseline").deviations()
    assert devs == [load_config("cpu-demo").deviations()[1]]


def test_guidance_option_deviations() -> None:
    cfg = load_config("paper-3b", ["guidance.mask_scope=teacher", "guidance.continuation=student"])
    devs = cfg.deviations()
    assert len(devs) == 2
    assert any(d.startswith("guidance.mask_scope=teacher") for d in devs)
    assert any(d.startswith("guidance.continuation=student") for d in devs)


def test_loss_ablations_are_reported_as_deviations() -> None:
    assert load_config("paper-3b", ["loss.shaping=none"]).deviations() != []
    assert load_config("paper-3b", ["loss.kl_coef=0.1"]).deviations() != []


def test_keyword_overrides() -> None:
    cfg = load_config(None, [], max_steps=3, seed=7)
    assert (cfg.max_steps, cfg.seed) == (3, 7)


def test_keyword_overrides_may_be_dotted_and_come_after_set() -> None:
    cfg = load_config(None, ["rollout.group_size=5"], **{"rollout.group_size": 6})
    assert cfg.rollout.group_size == 6


def test_none_keyword_overrides_are_ignored() -> None:
    cfg = load_config(None, [], max_steps=None, seed=None, output_dir=None)
    assert cfg.max_steps == 12
    assert cfg.seed == 0
    assert cfg.output_dir == "runs/cpu-demo"


def test_keyword_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_steps must be >= 1 or null"):
        load_config(None, [], max_steps=0)
    with pytest.raises(ConfigError, match=r"^seed must be int, got 'x'$"):
        load_config(None, [], seed="x")


def test_presets_say_only_what_differs_from_their_base():
    demo, base = load_config("cpu-demo").to_dict(), load_config("grpo-baseline").to_dict()
    differ = {k for k in demo if demo[k] != base[k]}
    assert differ == {"preset", "output_dir", "guidance"}
    assert base["guidance"] == {**demo["guidance"], "enabled": False}
    assert load_config("cpu-scripted").teacher.backend == "scripted"


def test_a_user_yaml_can_start_from_a_preset_and_bases_may_not_circle(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: grpo-baseline\nrollout:\n  group_size: 5\n")
    cfg = load_config(str(mine))
    assert (cfg.rollout.group_size, cfg.guidance.enabled, cfg.rollout.max_new_tokens) == (5, False, 96)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ConfigError, match="bases form a circle"):
        load_config(str(a))
