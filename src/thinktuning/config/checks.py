"""Configuration checks: value ranges and cross-field rules that types cannot express, and whether the
configured lengths fit the student's and the teacher's context windows.

Both run before anything expensive: ``validate`` when a config is built (:func:`thinktuning.config.load_config`)
and when the trainer is given one, ``check_context_lengths`` once the models are loaded and their limits are
known. Each error is one :class:`~thinktuning.errors.ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import math

from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.guidance.rules import peak_probability
from thinktuning.secrets import is_env_var_name

SCRIPTED_DATASETS = ("arithmetic", "gsm8k")
"""Tasks whose rows carry short worked steps, the material ``teacher.backend=scripted`` writes feedback from."""


def validate(cfg: ThinkTuningConfig) -> None:
    """Range checks that types cannot express. Each message names the field and what is allowed."""
    checks: list[tuple[bool, str]] = [
        (cfg.model.dtype != "float16",
         "model.dtype=float16 is not supported for training (float16 needs loss scaling, which the trainer does not "
         "do); use auto or bfloat16, or float32 on a GPU without bf16. thinktuning eval --dtype float16 works"),
        (cfg.rollout.group_size >= 2, "rollout.group_size must be >= 2 (GRPO compares rollouts within a group)"),
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (cfg.rollout.max_prompt_length >= 8, "rollout.max_prompt_length must be >= 8"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0 (rollouts are sampled)"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (cfg.rollout.batch_size >= 1, "rollout.batch_size must be >= 1"),
        (0 < cfg.rollout.vllm_gpu_memory_utilization <= 1, "rollout.vllm_gpu_memory_utilization must be in (0, 1]"),
        (cfg.rollout.vllm_kv_cache_gb is None or cfg.rollout.vllm_kv_cache_gb > 0,
         "rollout.vllm_kv_cache_gb must be > 0 or null"),
        (cfg.rollout.vllm_is_cap is None or cfg.rollout.vllm_is_cap >= 1,
         "rollout.vllm_is_cap must be >= 1 (a cap below 1 would shrink every on-policy token) or null"),
        (cfg.rollout.vllm_server_timeout_s > 0, "rollout.vllm_server_timeout_s must be > 0"),
        (0 <= cfg.guidance.p_start <= 1, "guidance.p_start must be in [0, 1]"),
        (0 <= cfg.guidance.p_end <= 1, "guidance.p_end must be in [0, 1]"),
        (0 < cfg.guidance.decay_fraction <= 1, "guidance.decay_fraction must be in (0, 1]"),
        (cfg.guidance.cutoff_epsilon is None or cfg.guidance.cutoff_epsilon >= 0,
         "guidance.cutoff_epsilon must be >= 0 or null"),
        (cfg.guidance.min_per_group >= 0, "guidance.min_per_group must be >= 0"),
        (0 < cfg.guidance.hint_fraction < 1, "guidance.hint_fraction must be in (0, 1): a share of the solution"),
        (not (cfg.guidance.enabled and cfg.guidance.mode in ("expert", "hint") and cfg.data.name == "prompts"
              and not cfg.data.solution_column),
         f"guidance.mode={cfg.guidance.mode} needs worked solutions: set data.solution_column to the column that "
         "holds them (or use guidance.mode=thinktuning or refine, which need none)"),
        (cfg.teacher.max_reason_tokens >= 1, "teacher.max_reason_tokens must be >= 1"),
        (cfg.teacher.max_phrase_tokens >= 1, "teacher.max_phrase_tokens must be >= 1"),
        (cfg.teacher.max_feedback_tokens >= 1, "teacher.max_feedback_tokens must be >= 1"),
        (cfg.teacher.repetition_penalty > 0, "teacher.repetition_penalty must be > 0 (1.0 = off)"),
        (cfg.teacher.batch_size >= 1, "teacher.batch_size must be >= 1"),
        (cfg.teacher.concurrency >= 1, "teacher.concurrency must be >= 1"),
        (cfg.teacher.timeout_s > 0, "teacher.timeout_s must be > 0"),
        (cfg.teacher.max_retries >= 0, "teacher.max_retries must be >= 0"),
        (all(x is None or x >= 0 for x in (cfg.teacher.price_in_per_million, cfg.teacher.price_out_per_million)),
         "teacher.price_in_per_million and teacher.price_out_per_million must be >= 0 or null"),
        (cfg.teacher.backend != "http" or bool(cfg.teacher.base_url),
         "teacher.backend=http needs teacher.base_url, the server's API root (e.g. http://127.0.0.1:8000/v1)"),
        (cfg.reward.timeout_s > 0, "reward.timeout_s must be > 0"),
        (0 <= cfg.loss.clip_low < 1, "loss.clip_low must be in [0, 1)"),
        (cfg.loss.clip_high >= 0, "loss.clip_high must be >= 0"),
        (cfg.loss.kl_coef >= 0, "loss.kl_coef must be >= 0"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.max_grad_norm > 0, "optim.max_grad_norm must be > 0"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (cfg.optim.micro_batch_size >= 1, "optim.micro_batch_size must be >= 1"),
        (cfg.optim.ppo_epochs >= 1, "optim.ppo_epochs must be >= 1"),
        (cfg.optim.mini_batch_prompts is None or cfg.optim.mini_batch_prompts >= 1,
         "optim.mini_batch_prompts must be >= 1 or null"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be >= 1 or null"),
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.save_every >= 0, "save_every must be >= 0 (0 = only at the end)"),
        (cfg.keep_last >= 1, "keep_last must be >= 1"),
        (cfg.lora.r >= 1, "lora.r must be >= 1"),
        (cfg.lora.alpha > 0, "lora.alpha must be > 0"),
        (0 <= cfg.lora.dropout < 1, "lora.dropout must be in [0, 1)"),
        (bool(cfg.lora.target_modules) and all(m.strip() for m in cfg.lora.target_modules),
         "lora.target_modules must name at least one module (or be all-linear)"),
        (cfg.data.limit is None or cfg.data.limit >= 1, "data.limit must be >= 1 or null"),
        (bool(cfg.data.levels) and all(1 <= lv <= 4 for lv in cfg.data.levels),
         "data.levels must be a non-empty list of levels in 1..4"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    trackers = ("tensorboard", "wandb", "trackio")
    for name in cfg.report_to:
        if name not in trackers:
            raise ConfigError(f"report_to: unknown tracker {name!r}; allowed: {', '.join(trackers)} "
                              "(metrics.jsonl is always written)")
    if cfg.teacher.backend == "http":
        from thinktuning.openai_client import normalize_base_url

        try:
            normalize_base_url(cfg.teacher.base_url)
        except ConfigError as e:
            raise ConfigError(f"teacher.base_url={e}") from None
    env = cfg.teacher.api_key_env
    if env and not is_env_var_name(env):  # never echoed: it may be the key itself
        raise ConfigError(f"teacher.api_key_env must name the environment variable that holds the key (e.g. "
                          f"OPENAI_API_KEY), not the key itself; got a value of {len(env)} characters")
    if cfg.guidance.asks_teacher() and cfg.teacher.backend == "scripted" and cfg.data.name not in SCRIPTED_DATASETS:
        raise ConfigError(
            f"teacher.backend=scripted writes its feedback from a task's short worked steps, which only data.name="
            f"{' and '.join(SCRIPTED_DATASETS)} carry; data.name={cfg.data.name} has none usable (MATH solutions are "
            "long LaTeX derivations, often longer than teacher.max_feedback_tokens, and MATH-500 copies may have no "
            "solution at all). Use one of those datasets, or teacher.backend=model"
        )
    mb = cfg.optim.mini_batch_prompts
    if mb is not None and cfg.rollout.prompts_per_step % mb != 0:
        raise ConfigError(
            f"optim.mini_batch_prompts={mb} must divide rollout.prompts_per_step={cfg.rollout.prompts_per_step}"
        )
    dead = dead_settings(cfg)
    if dead:
        raise ConfigError(dead[0])


def dead_settings(cfg: ThinkTuningConfig) -> list[str]:
    """Settings that switch something on while another setting makes it do nothing, each with the fix.

    Such a run starts, prints what it was asked to do (``guidance=on``) and silently does something else, which is
    worse than an error. Only values a user chose are judged, never a default left alone, and nothing that
    ``guidance.enabled=false`` switches off: the plain-GRPO baseline keeps every other setting of the run it is
    compared with.
    """
    out = []
    g, r, t = cfg.guidance, cfg.rollout, cfg.teacher
    if g.enabled:
        out += _dead_guidance(cfg)
        if g.mask_scope == "teacher" and cfg.loss.shaping == "none":
            out.append("guidance.mask_scope=teacher picks which tokens get the shaped objective, but loss.shaping=none "
                       "shapes no token (guided tokens take the PPO loss), so it changes nothing. Set "
                       "guidance.mask_scope=rollout, or choose a shaping (aas, aas-recipe, luffy)")
        http_only = {"teacher.base_url": t.base_url, "teacher.server_model": t.server_model,  # names only: a URL
                     "teacher.api_key_env": t.api_key_env, "teacher.api=chat": t.api == "chat"}  # may hold a password
        chosen = [k for k, v in http_only.items() if v]
        if t.backend != "http" and chosen:
            out.append(f"{' and '.join(chosen)} {_apply(chosen)} to teacher.backend=http only; with teacher.backend="
                       f"{t.backend} no server is asked. Set teacher.backend=http to use the server, or remove "
                       f"{_it(chosen)}")
    if cfg.optim.warmup_steps > 0 and cfg.optim.lr_scheduler == "constant":
        out.append(f"optim.warmup_steps={cfg.optim.warmup_steps} does nothing with optim.lr_scheduler=constant "
                   "(that schedule has no warmup). Set optim.lr_scheduler=linear or cosine, or optim.warmup_steps=0")
    if cfg.epochs > 1 and cfg.max_steps is not None:
        out.append(f"epochs={cfg.epochs} does nothing: max_steps={cfg.max_steps} sets the run's length (the data "
                   "repeats as needed). Set max_steps=null to train for that many epochs, or epochs=1")
    if r.backend == "transformers":
        vllm_only = [s for s, on in (("rollout.vllm_mode=server", r.vllm_mode == "server"),
                                     ("rollout.vllm_sleep=true", r.vllm_sleep)) if on]
        if vllm_only:
            out.append(f"{' and '.join(vllm_only)} {_apply(vllm_only)} to rollout.backend=vllm only; with "
                       "rollout.backend=transformers rollouts are sampled in this process. Set rollout.backend=vllm, "
                       f"or remove {_it(vllm_only)}")
    return out


def _apply(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


def _it(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


def _dead_guidance(cfg: ThinkTuningConfig) -> list[str]:
    """Guidance that is on but can never guide a rollout (:func:`~thinktuning.guidance.rules.peak_probability`)."""
    g, size = cfg.guidance, cfg.rollout.group_size
    peak = peak_probability(g.schedule, g.p_start, g.p_end, g.cutoff_epsilon)
    off = "guidance.enabled=false for plain GRPO"
    if g.cutoff_epsilon is not None and peak == 0.0:
        threshold = g.p_end + g.cutoff_epsilon
        why = (" (the constant schedule keeps p at p_start, and the cutoff still compares it with p_end + "
               "cutoff_epsilon)" if g.schedule == "constant" else "")
        return [f"guidance.p_start={g.p_start:g} is at or below the cutoff guidance.p_end + guidance.cutoff_epsilon = "
                f"{threshold:g}, so guidance switches off before the first step and no rollout is ever guided, "
                f"although guidance is on{why}. Raise guidance.p_start above {threshold:g}, set "
                f"guidance.cutoff_epsilon=null (no cutoff), or set {off}"]
    if peak == 0.0:
        return [f"guidance.p_start={g.p_start:g} and guidance.p_end={g.p_end:g} (schedule {g.schedule}) make p = 0 at "
                f"every step, so no rollout is ever guided, although guidance is on. Raise guidance.p_start, or set "
                f"{off}"]
    if g.min_per_group == 0 and math.floor(size * peak + 1e-9) == 0:
        return [f"guidance.min_per_group=0 and p at most {peak:g} guide floor(rollout.group_size {size} x p) = 0 "
                f"rollouts per group at every step, so no rollout is ever guided, although guidance is on. Set "
                f"guidance.min_per_group=1, raise guidance.p_start to at least 1/{size} = {1 / size:.3g}, or set {off}"]
    return []


TEACHER_FORMAT_TOKENS = 64
"""Room for what the teacher decoder adds around the fields: tags and the "The final answer is \\boxed{...}" close."""


def check_context_lengths(
    cfg: ThinkTuningConfig,
    student_limit: int | None,
    teacher_limit: int | None = None,
    teacher_prompt_tokens: int = 0,
) -> None:
    """Stop at start when the configured lengths cannot fit a model's context window (``None``: unknown, skip).

    The student's longest sequence is a guided rollout: prompt + its response + the spliced feedback (+ a second
    response when the student continues after the teacher). The teacher's longest request is its instructions and
    demonstrations (``teacher_prompt_tokens``, measured by the caller) + question + response + the fields it writes.
    A reference the teacher may be shown is data and is not counted.
    """
    r, t = cfg.rollout, cfg.teacher
    parts = [("rollout.max_prompt_length", r.max_prompt_length), ("rollout.max_new_tokens", r.max_new_tokens)]
    what = "the longest rollout"
    if cfg.guidance.enabled:
        parts.append(("teacher.max_feedback_tokens", t.max_feedback_tokens))
        what = "the longest guided rollout"
        if cfg.guidance.continuation == "student" or cfg.guidance.mode == "hint":
            parts.append(("rollout.max_new_tokens", r.max_new_tokens))
            what += ", whose student continues after the feedback or hint"
        if cfg.guidance.mode == "refine":  # the refinement's context: answer, critique, request, then the refinement
            parts += [("teacher.max_reason_tokens", t.max_reason_tokens), ("the refine request", TEACHER_FORMAT_TOKENS),
                      ("rollout.max_new_tokens", r.max_new_tokens)]
            what += ", refined after a critique"
    _fits(parts, student_limit, what, f"the student's context ({cfg.model.student})")
    if cfg.guidance.asks_teacher():
        parts = [
            ("the teacher's instructions and demonstrations", teacher_prompt_tokens),
            ("rollout.max_prompt_length", r.max_prompt_length), ("rollout.max_new_tokens", r.max_new_tokens),
            ("teacher.max_reason_tokens", t.max_reason_tokens), ("teacher.max_phrase_tokens", t.max_phrase_tokens),
            ("tags", TEACHER_FORMAT_TOKENS),
        ]
        _fits(parts, teacher_limit, "the teacher's longest request", f"the teacher's context ({t.model})")


def _fits(parts: list[tuple[str, int]], limit: int | None, what: str, whose: str) -> None:
    total = sum(n for _, n in parts)
    if limit is not None and total > limit:
        terms = " + ".join(f"{name} ({n})" for name, n in parts)
        raise ConfigError(
            f"{terms} = {total} tokens ({what}) exceed {whose} of {limit} tokens. Lower these lengths until they sum "
            f"to at most {limit}, or use a model with a longer context"
        )
