"""The configuration schema: one dataclass per config section, every field documented where it is declared.

This file is the reference users read to learn what they can change. Enumerated fields are ``Literal`` types so
that validation can list the allowed values without a second, drifting list. Building a config from presets and
overrides is :mod:`thinktuning.config.load`; range and cross-field checks are :mod:`thinktuning.config.checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    student: str = "smollm2-135m-instruct"
    """Student model: hub id, local folder, ``.gguf`` file, or the alias ``smollm2-135m-instruct``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision. ``auto``: bfloat16 where the device does it fast (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), float32 elsewhere; ``run.json`` records the choice and why. Trained weights and optimizer
    states stay float32 either way: the update runs under autocast, rollouts sample from a copy in this dtype, and
    the frozen teacher and KL reference are loaded in it (docs/precision.md)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repo. Off: model files are untrusted input."""
    require_gpu: bool = False
    """Stop at start, with a clear message, when no CUDA GPU is visible (set by presets sized for GPUs)."""
    cache_dir: str | None = None
    """Where converted models (e.g. the embedded GGUF) are cached. Default: ~/.cache/thinktuning."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: activation memory of one
    layer instead of all, for about one more forward pass of compute (``thinktuning plan`` shows what it saves)."""


@dataclass
class DataConfig:
    name: Literal["arithmetic", "gsm8k", "math", "prompts"] = "arithmetic"
    """Training task: built-in procedural ``arithmetic``, ``gsm8k``, ``math``, or ``prompts``: any dataset of
    prompts and reference answers (TRL's standard or conversational prompt format; columns below)."""
    source: str | None = None
    """Hub dataset name or local path (JSONL/JSON/CSV/Parquet file, or a folder with ``{split}.jsonl``). None: the
    task's default (``prompts`` has none)."""
    hub_config: str | None = None
    """The hub dataset's configuration (subset) name, when it has several."""
    question_column: str = "prompt"
    """``prompts``: the column holding the prompt, as text or as chat messages (system and user turns)."""
    answer_column: str = "answer"
    """``prompts``: the reference answer (text or number; ``... #### 42`` and ``\\boxed{42}`` give ``42``)."""
    solution_column: str | None = None
    """``prompts``: an optional worked solution (what ``teacher.sees_reference=solution`` shows the teacher; its
    ``\\boxed{}`` answer is used when the answer cell is empty)."""
    instruction: str | None = None
    """``prompts``: appended to every prompt after a blank line (e.g. how to format the answer); None: verbatim."""
    split: str = "train"
    limit: int | None = None
    """Use at most this many rows (``arithmetic``: how many problems to generate; default 2000)."""
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels of the ``arithmetic`` task (1 = single addition ... 4 = two-step word problems)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Rows without a usable reference: stop with an error naming the row, or skip and count them."""
    shuffle: bool = True


@dataclass
class RolloutConfig:
    backend: Literal["transformers", "vllm"] = "transformers"
    """Student rollout engine: our own KV-cache sampling loop, or vLLM (much faster on GPUs; needs the ``vllm``
    package, on CPU the ``.venv-vllm`` that ``scripts/setup.sh --test`` builds). See src/thinktuning/rollout/vllm.py."""
    prompts_per_step: int = 4
    """Prompts (groups) per training step (B)."""
    group_size: int = 4
    """Rollouts per prompt (G). The recipe uses 5."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens) are cut from the left, keeping the question's end."""
    max_new_tokens: int = 128
    """Response length limit; a response that reaches it is 'truncated' and never guided."""
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32
    """Sequences sampled together (memory vs speed)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """``colocate``: vLLM runs inside the training process, weights handed over in memory. ``server``: a separate
    ``vllm serve`` (TRL's set-up) at ``vllm_server_url``; weights go over NCCL, so it needs a CUDA GPU."""
    vllm_gpu_memory_utilization: float = 0.3
    """Colocate on GPU: the fraction of GPU memory vLLM may take (weights + KV cache); the trainer needs the rest."""
    vllm_kv_cache_gb: float | None = None
    """Explicit KV-cache size in GiB (overrides the fraction). None: the fraction on GPU, 1 GiB on CPU, where vLLM
    counts the whole process, trainer included, against the fraction."""
    vllm_sleep: bool = False
    """Colocate on GPU: put vLLM to sleep (free its weights and KV cache) while the trainer updates. CPU: ignored."""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM's weight dtype. ``auto``: the run's compute precision (``model.dtype``, resolved: bfloat16 on a CPU
    with AVX512-BF16 or AMX, float32 on one without; not vLLM's own "auto", which is bfloat16 on every CPU). Pushed
    weights are cast to it; the update corrects for the difference (``rollout/logprob_abs_diff``)."""
    vllm_server_url: str = "http://localhost:8000"
    vllm_server_timeout_s: float = 240.0
    """How long to wait for the server to answer its health check at start."""
    vllm_is_cap: float | None = 3.0
    """vLLM's log-probs differ slightly from the trainer's, so each vLLM-sampled token's loss is weighted by the
    truncated importance ratio min(pi_trainer / pi_vllm, cap) (TRL's importance-sampling correction in its
    ``token_truncate`` mode; 3.0 is TRL's default upper bound). None: no correction (the mismatch is still logged
    as rollout/logprob_abs_diff)."""


@dataclass
class TeacherConfig:
    backend: Literal["model", "http", "scripted"] = "model"
    """Who writes feedback: ``model`` = a local transformers model (``teacher.model``); ``http`` = a model behind an
    OpenAI-compatible server (``teacher.base_url``: vLLM, llama.cpp, ...); ``scripted`` = a research instrument, not
    the paper's teacher: feedback written from templates out of the task's worked steps and reference answer, in the
    behaviour the student's correctness picks (``arithmetic`` and ``gsm8k`` only; ``teacher.model``,
    ``sees_reference`` and the decoding fields do not apply). It isolates the method's mechanism from a weak teacher."""
    model: str = "student-init"
    """``student-init`` = a frozen copy of the student's starting weights (the paper), or any model spec."""
    sees_reference: Literal["none", "answer", "solution"] = "none"
    """What the teacher may see besides question and response. Anything but ``none`` deviates from the paper."""
    max_reason_tokens: int = 256
    max_phrase_tokens: int = 256
    max_feedback_tokens: int = 512
    """Spliced feedback (reason + phrase) longer than this many student tokens is cut (recipe: 512)."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty on tokens the teacher already wrote in its feedback (1.0 = off)."""
    close_with_answer: bool = True
    """If the phrase has no ``\\boxed{}``, write 'The final answer is \\boxed{' and let the teacher (or, when it
    sees the reference, the reference) complete it, so the format cannot be lost."""
    batch_size: int = 8
    base_url: str | None = None
    """``http``: the server's API root, e.g. ``http://127.0.0.1:8000/v1``."""
    api: Literal["completions", "chat"] = "completions"
    """``http``: ``completions`` renders the prompt with ``teacher.model``'s tokenizer and writes the tags itself (any
    model keeps the format); ``chat`` sends chat messages and parses the answer (no tokenizer needed)."""
    server_model: str | None = None
    """``http``: the model name sent to the server. None: the first model its ``/v1/models`` lists."""
    api_key_env: str | None = None
    """``http``: the environment variable holding the API key (sent as a Bearer token). The key itself never goes
    into a config. None: no key."""
    concurrency: int = 8
    """``http``: requests in flight at once (one step's cases are sent together)."""
    timeout_s: float = 120.0
    """``http``: per-request limit; a request that exceeds it is retried, then counted as no feedback."""
    max_retries: int = 3
    """``http``: retries (exponential backoff) after no connection, a timeout, HTTP 5xx or 429."""
    price_in_per_million: float | None = None
    """Price of a million prompt tokens sent to the teacher (any currency; e.g. an API's list price). With either
    price set, ``teacher/cost`` is logged per step and totalled in the report; None: no cost is computed."""
    price_out_per_million: float | None = None
    """Price of a million tokens the teacher writes."""
    cache: str | None = None
    """Replay teacher answers from another run: its ``teacher_cache.jsonl`` or the run folder holding it. A case the
    cache holds (same teacher settings, question and student response) is answered without calling the teacher;
    every run records its own answers in ``RUN/teacher_cache.jsonl`` (a resumed run reuses them)."""


MODE_LABELS = {
    "expert": "LUFFY-style expert traces (the worked solution replaces a rollout, off-policy)",
    "refine": "Critique-GRPO-style refinements (the student rewrites its answer after the teacher's critique)",
    "hint": "prefix hints (the student continues the first part of the worked solution)",
}
"""What each ``guidance.mode`` other than the paper's is, in run.json's deviations."""


@dataclass
class GuidanceConfig:
    enabled: bool = True
    """False = plain GRPO (the baseline)."""
    mode: Literal["thinktuning", "expert", "refine", "hint"] = "thinktuning"
    """What a chosen rollout becomes (docs/guidance-family.md). ``thinktuning``: the teacher's feedback is spliced
    after the student's response (the paper). ``expert`` (LUFFY-style): the example's worked solution replaces it,
    off-policy. ``refine`` (Critique-GRPO-style): the teacher's reason is a critique, the student writes a refined
    answer with it in context, and the refinement replaces the rollout. ``hint`` (prefix-hint methods): the first
    ``hint_fraction`` of the worked solution's tokens is given and the student continues it on-policy. Selection,
    schedule, rewards, advantages, the loss and the report are the same for all four."""
    hint_fraction: float = 0.5
    """``hint``: the share of the worked solution's tokens given as the prefix (at least one token, never all)."""
    hint_loss: Literal["mask", "shaped"] = "mask"
    """``hint``: the given prefix carries no loss (``mask``) or is trained with the shaped objective (``shaped``)."""
    schedule: Literal["linear", "constant", "cosine"] = "linear"
    p_start: float = 0.10
    p_end: float = 0.01
    decay_fraction: float = 1 / 3
    """Fraction of training over which p decays from p_start to p_end (recipe: the first third)."""
    cutoff_epsilon: float | None = 0.05
    """Guidance switches off for good once p <= p_end + cutoff_epsilon (recipe: 0.05). None: never."""
    min_per_group: int = 1
    """k = max(min_per_group, floor(#eligible * p)) rollouts guided per group (recipe: 1)."""
    mask_scope: Literal["rollout", "teacher"] = "rollout"
    """Which tokens get the shaped objective: every token of a guided rollout (recipe) or the teacher's only."""
    continuation: Literal["teacher", "student"] = "teacher"
    """``teacher``: the teacher's phrase carries the answer (recipe). ``student``: only the teacher's reason is
    spliced and the student continues on-policy (an extension)."""
    target: Literal["uniform", "zero_signal", "failing"] = "uniform"
    """Which groups guidance reaches: any (``uniform``, the paper), only groups whose own rollouts all got the same
    reward, where GRPO has no signal (``zero_signal``), or only groups with no correct rollout (``failing``)."""
    boundary: Literal["train", "skip"] = "train"
    """The token the splice puts where the student had ended its turn (the teacher's first token). ``train``: it is
    trained like every other token (recipe), which also teaches "do not stop after your answer". ``skip`` (our
    variant, not the paper's): it carries no loss, so guided rollouts leave the student's decision to stop alone."""

    def asks_teacher(self) -> bool:
        """Whether guidance asks a teacher anything (expert and hint modes use the dataset's worked solutions)."""
        return self.enabled and self.mode in ("thinktuning", "refine")


@dataclass
class RewardConfig:
    answer_fallback: Literal["none", "last_number"] = "none"
    """If a response has no ``\\boxed{}``: score it 0 (``none``) or check its last number."""
    zero_if_truncated: bool = True
    functions: list[str] = field(default_factory=list)
    """Extra reward functions by import path (``pkg.module:func``, TRL signature); summed with correctness."""
    timeout_s: float = 5.0
    """Per-answer limit for the equivalence check; a check that exceeds it scores 0 and is counted."""


@dataclass
class LossConfig:
    shaping: Literal["aas", "aas-recipe", "luffy", "none"] = "aas"
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    advantage: Literal["grpo", "rloo"] = "grpo"
    normalize_std: bool = True
    kl_coef: float = 0.0
    """KL penalty to the initial student (k3 estimator). 0 = no KL term, as in the recipe."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    mini_batch_prompts: int | None = None
    """Prompts per optimizer step (PPO mini-batch). None: the whole step's batch (one update per step)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (gradient accumulation inside a mini-batch)."""
    ppo_epochs: int = 1
    skip_zero_advantage: bool = True
    """Leave rows with advantage exactly 0 out of forward and backward (their gradient is exactly 0; their tokens
    still count in the loss normaliser, so the update is unchanged). Applies without KL and with one process; the
    ``loss/*`` token metrics are then over the rows that carry gradient. See ``microbatch.py``."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train PEFT LoRA adapters instead of all weights. With ``teacher.model=student-init`` the teacher (and the
    KL reference) is then the same model with its adapters off: no second copy in memory. Checkpoints hold the
    adapter only."""
    r: int = 16
    """Rank of each adapter."""
    alpha: int = 32
    """LoRA scaling numerator: the adapter's update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapters' input. 0 by default: with dropout the policy that sampled a rollout and the one
    whose ratio is clipped differ at random, which PPO's ratio would read as policy change."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get adapters (``q_proj,v_proj``...), or ``all-linear``: every linear layer but the head."""


@dataclass
class ThinkTuningConfig:
    """Everything a run needs. ``preset`` records which preset it started from."""

    preset: str | None = None
    output_dir: str = "runs/cpu-demo"
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many steps. None: one pass over the data (``epochs`` times)."""
    epochs: int = 1
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    log_rollouts: bool = True
    quiet: bool = False
    """Print only the first and last progress line (for logs); otherwise one line per step (live on a terminal)."""
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = field(default_factory=list)
    """Experiment trackers that also receive each step's metrics (metrics.jsonl is always written). Each needs
    its package (``pip install 'thinktuning[trackers]'``); TensorBoard logs go to ``<output_dir>/tensorboard``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def deviations(self) -> list[str]:
        """Settings that depart from the paper's method, so run folders can say so instead of hiding it."""
        out = []
        if self.guidance.enabled and self.teacher.backend == "scripted":
            out.append(
                "teacher.backend=scripted: a research instrument, not the paper's teacher. Feedback is written from "
                "templates out of the worked solution and the reference answer, in the behaviour that the reward's "
                "verdict on the student's response picks (the paper's teacher is a frozen copy of the student that "
                "sees only question and response); teacher.sees_reference and teacher.model do not apply"
            )
        elif self.guidance.enabled and self.teacher.sees_reference != "none":
            out.append(
                f"teacher.sees_reference={self.teacher.sees_reference}: the teacher is shown the reference "
                f"{self.teacher.sees_reference} (the paper's teacher sees only question and response)"
            )
        if self.guidance.enabled and self.guidance.mode != "thinktuning":
            out.append(f"guidance.mode={self.guidance.mode}: {MODE_LABELS[self.guidance.mode]}, not ThinkTuning's "
                       "spliced feedback (another member of the guidance family)")
        if self.guidance.enabled and self.guidance.continuation == "student":
            out.append("guidance.continuation=student: the student writes the answer after the teacher's reason")
        if self.guidance.enabled and self.guidance.target != "uniform":
            out.append(f"guidance.target={self.guidance.target}: only some groups are guided (the paper guides any "
                       "group; an extension)")
        if self.guidance.enabled and self.guidance.boundary == "skip":
            out.append("guidance.boundary=skip: the splice's first teacher token (where the student had stopped) "
                       "carries no loss (our variant, not the paper's)")
        if self.guidance.enabled and self.guidance.mask_scope == "teacher":
            out.append("guidance.mask_scope=teacher: only teacher tokens are shaped (recipe: the whole rollout)")
        if self.loss.shaping != "aas":
            out.append(f"loss.shaping={self.loss.shaping}: guided tokens are not shaped with the paper's AAS")
        if self.loss.kl_coef > 0:
            out.append(f"loss.kl_coef={self.loss.kl_coef}: a KL term the recipe does not have")
        if self.loss.aggregation != "token-mean":
            out.append(f"loss.aggregation={self.loss.aggregation}: the recipe averages over all tokens")
        if self.lora.enabled:
            out.append(f"lora.enabled: rank-{self.lora.r} LoRA adapters are trained (the paper fine-tunes all weights)")
        if self.reward.answer_fallback != "none":
            out.append("reward.answer_fallback=last_number: responses without \\boxed{} are scored by last number")
        return out


# ---------------------------------------------------------------------------------------------- building

