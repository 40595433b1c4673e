"""Will it fit? Memory per GPU of a config's training run under DDP, ZeRO-2 and full sharding, with and without
LoRA and gradient checkpointing, from parameter counts and the config's batch shapes (``thinktuning plan``).

An estimate to choose a strategy before renting GPUs, not a measurement: it counts what scales with the model and
the batch (weights, gradients, AdamW states, activations, KV caches, frozen copies, vLLM's share) and leaves out
the CUDA context, allocator fragmentation and communication buffers, hence the 10% margin of :func:`verdict`.
GB here is 10^9 bytes (a nominal "80 GB" card holds about 85 * 10^9, so the margin is larger than it reads).
The maths is in small pure functions; :func:`plan_inputs` reads the config and model, :func:`render` writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.models.shapes import ModelSize, Shape, lora_parameters, model_size

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("DDP", "ZeRO-2", "FSDP2 / ZeRO-3")
"""DDP replicates everything; ZeRO-2 shards gradients and optimizer states; FSDP2 / ZeRO-3 also the weights."""
FIT_MARGIN = 0.9
"""A plan "fits" at <= 90% of the GPU; the rest is for what is not counted (CUDA context, fragmentation)."""
LORA_BYTES = (4, 4, 8)
"""LoRA adapter weights, gradients and AdamW moments: fp32 (PEFT upcasts bf16/fp16 adapters by default), so the
adapter is its own master copy."""


def parse_count(text: str) -> int:
    """``3212749824``, ``3.2e9``, ``3.2B`` or ``135M`` as a parameter count."""
    t = text.strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"--params expects a parameter count such as 3212749824, 3.2e9 or 3.2B, got {text!r}")
    return round(value)


AUTO_NOTE = ", model.dtype=auto on a GPU with bf16"


def compute_dtype(cfg: ThinkTuningConfig) -> str:
    """The precision a GPU run computes in: ``auto`` plans as bfloat16 (what it picks on a GPU with bf16)."""
    return "bfloat16" if cfg.model.dtype == "auto" else cfg.model.dtype


def optimizer_bytes_per_param() -> int:
    """AdamW's two fp32 moments. The trained weights are float32 whatever the compute precision, so they are their
    own master copy (models/precision.py)."""
    return 4 + 4


def model_state_bytes(params: int, trainable: int, dtype_bytes: int, strategy: str, gpus: int,
                      lora: bool) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per GPU; ``dtype_bytes`` is the compute precision's. Full fine-tuning:
    float32 weights and gradients, plus (below float32) autocast's cached low-precision copy of the weights during
    the forward and backward. LoRA: the frozen base is held in the compute dtype and has no gradient or optimizer
    state; the ``trainable`` adapters are fp32."""
    if lora:
        w_a, g_a, o_a = LORA_BYTES
        weights, grads, optim = params * dtype_bytes + trainable * w_a, trainable * g_a, trainable * o_a
    else:
        cast_cache = dtype_bytes if dtype_bytes < 4 else 0
        weights, grads = params * (4 + cast_cache), params * 4
        optim = params * optimizer_bytes_per_param()
    if strategy == "DDP":
        return float(weights), float(grads), float(optim)
    if strategy == "ZeRO-2":
        return float(weights), grads / gpus, optim / gpus
    return weights / gpus, grads / gpus, optim / gpus


def layer_activation_bytes(shape: Shape, dtype_bytes: int, checkpointing: bool) -> int:
    """Bytes one decoder layer keeps for backward per token (an estimate by counting saved tensors).

    Without checkpointing, in the weights' dtype: the 2 RMSNorms' inputs and outputs (4h), q (h), k and v
    (2 kv_dim), the attention output (h; SDPA/flash keeps no seq x seq matrix), and the MLP's gate, up, act(gate)
    and product (4 I): 6h + 2 kv_dim + 4 I values; plus, in 16-bit, the fp32 copy each RMSNorm makes of its input
    (2 x 4h bytes). With (per-layer) checkpointing only the layer's input is kept: h values."""
    h = shape.hidden
    if checkpointing:
        return dtype_bytes * h
    upcast = 2 * 4 * h if dtype_bytes < 4 else 0
    return dtype_bytes * (6 * h + 2 * shape.kv_dim + 4 * shape.intermediate) + upcast


def activation_bytes(shape: Shape, dtype_bytes: int, rows: int, seq_len: int, new_tokens: int,
                     checkpointing: bool) -> float:
    """Activations of one micro-batch: every layer's saved tensors over rows x seq_len tokens (with
    checkpointing, plus one layer's full set while it is recomputed), plus the fp32 logits of the response
    positions (rows x new_tokens x vocab x 4 bytes)."""
    tokens = rows * seq_len
    layers = shape.layers * layer_activation_bytes(shape, dtype_bytes, checkpointing) * tokens
    recompute = layer_activation_bytes(shape, dtype_bytes, False) * tokens if checkpointing else 0
    return float(layers + recompute + rows * new_tokens * shape.vocab * 4)


def rows_per_gpu(limit: int, group_size: int, prompts: int, gpus: int) -> int:
    """Sequences one process handles at once: its share of the groups (dealt out whole), at most ``limit``."""
    return min(limit, math.ceil(group_size * prompts / gpus))


def kv_cache_bytes(shape: Shape, dtype_bytes: int, rows: int, seq_len: int) -> float:
    """Keys and values of every layer for rows x seq_len tokens."""
    return float(rows * seq_len * 2 * shape.layers * shape.kv_dim * dtype_bytes)


def total_bytes(fixed: float, activations: float, kv_cache: float, vllm: float, vllm_sleep: bool) -> float:
    """Peak per GPU: what is always held (weights, gradients, optimizer, frozen copies), plus the larger of the
    update (activations, and vLLM unless it sleeps) and sampling (vLLM, and the transformers KV caches)."""
    return fixed + max(activations + (0.0 if vllm_sleep else vllm), vllm + kv_cache)


def verdict(total: float, memory: float, complete: bool = True) -> str:
    """``yes`` within the margin, ``tight`` above it, ``no`` over the GPU; ``yes?`` when parts are unknown."""
    if total > memory:
        return "no"
    word = "yes" if total <= FIT_MARGIN * memory else "tight"
    return word if complete else f"{word}?"


@dataclass(frozen=True)
class Row:
    """One strategy's bytes per GPU (None: unknown, the model's shape is not known)."""

    strategy: str
    lora: bool
    checkpointing: bool
    weights: float
    gradients: float | None
    optimizer: float | None
    activations: float | None
    kv_cache: float | None
    frozen: float
    vllm: float
    total: float
    fits: str

    @property
    def name(self) -> str:
        return " + ".join([self.strategy, *(["LoRA"] if self.lora else []), *(["GC"] if self.checkpointing else [])])


@dataclass(frozen=True)
class Inputs:
    """Everything the rows are computed from, read once from the config and the model (shown to the user)."""

    cfg: ThinkTuningConfig
    gpus: int
    memory: float
    student: ModelSize
    teacher: ModelSize | None
    """A separate teacher model held in memory (``teacher.model`` other than student-init), if any."""
    dtype_bytes: int
    lora_trainable: int | None
    micro_rows: int
    sample_rows: int


def frozen_student_held(cfg: ThinkTuningConfig, lora: bool) -> bool:
    """A frozen copy of the initial student is loaded (teacher ``student-init`` or a KL reference), unless LoRA
    is on: then the student with its adapters off is that copy (see ``trainer._load_teacher_and_ref``)."""
    t = cfg.teacher
    teacher_copy = cfg.guidance.asks_teacher() and t.backend == "model" and t.model == "student-init"
    return not lora and (teacher_copy or cfg.loss.kl_coef > 0)


def _size(spec: str, cfg: ThinkTuningConfig, params: int | None, field: str, flag: str) -> ModelSize:
    found = model_size(spec, cfg.model.cache_dir)
    if params is not None:
        return ModelSize(spec, params, found.shape if found else None, f"given with {flag}")
    if found is None:
        raise ConfigError(f"{field}={spec}: its parameter count is unknown here (no local config.json, not in the "
                          f"Hugging Face cache, not in the table of known architectures). Fix: give it with "
                          f"{flag} N (e.g. {flag} 3.2e9), or set {field} to a folder holding its config.json")
    return found


def plan_inputs(cfg: ThinkTuningConfig, gpus: int, gpu_memory_gb: float, params: int | None = None,
                teacher_params: int | None = None) -> Inputs:
    """Check the arguments and read the model sizes and batch shapes the rows need."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"--gpus must be a whole number >= 1, got {gpus!r}")
    if not math.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0:
        raise ConfigError(f"--gpu-memory must be a positive number of GB per GPU (e.g. 80), got {gpu_memory_gb!r}")
    student = _size(cfg.model.student, cfg, params, "model.student", "--params")
    teacher = None
    if cfg.guidance.asks_teacher() and cfg.teacher.backend == "model" and cfg.teacher.model != "student-init":
        teacher = _size(cfg.teacher.model, cfg, teacher_params, "teacher.model", "--teacher-params")
    r, o = cfg.rollout, cfg.optim
    shape = student.shape
    return Inputs(
        cfg=cfg, gpus=gpus, memory=gpu_memory_gb * GB, student=student, teacher=teacher,
        dtype_bytes=DTYPE_BYTES[compute_dtype(cfg)],
        lora_trainable=lora_parameters(shape, cfg.lora.r, cfg.lora.target_modules) if shape else None,
        micro_rows=rows_per_gpu(o.micro_batch_size, r.group_size, o.mini_batch_prompts or r.prompts_per_step, gpus),
        sample_rows=rows_per_gpu(r.batch_size, r.group_size, r.prompts_per_step, gpus),
    )


def vllm_share(inp: Inputs) -> float:
    """GPU bytes a colocated vLLM takes: its fraction of the GPU, or its own weight copy plus an explicit KV cache
    (``vllm_kv_cache_gb`` is GiB). 0 without vLLM, or in server mode (vLLM runs on other GPUs)."""
    r = inp.cfg.rollout
    if r.backend != "vllm" or r.vllm_mode != "colocate":
        return 0.0
    if r.vllm_kv_cache_gb is not None:
        dtype = compute_dtype(inp.cfg) if r.vllm_dtype == "auto" else r.vllm_dtype
        return inp.student.parameters * DTYPE_BYTES[dtype] + r.vllm_kv_cache_gb * 2**30
    return r.vllm_gpu_memory_utilization * inp.memory


def kv_caches(inp: Inputs) -> dict[str, tuple[Shape | None, int, int]]:
    """The transformers decoders that hold a KV cache, as (shape, rows, tokens): the student's sampling loop (not
    with vLLM, whose cache is in its share) and a local model teacher (``teacher.batch_size`` rows over prompt,
    response, reason and phrase). They run one after the other."""
    cfg = inp.cfg
    r, t = cfg.rollout, cfg.teacher
    seq = r.max_prompt_length + r.max_new_tokens
    out: dict[str, tuple[Shape | None, int, int]] = {}
    if r.backend == "transformers":
        out["student"] = (inp.student.shape, inp.sample_rows, seq)
    if cfg.guidance.asks_teacher() and t.backend == "model":
        shape = inp.student.shape if t.model == "student-init" else inp.teacher.shape if inp.teacher else None
        out["teacher"] = (shape, t.batch_size, seq + t.max_reason_tokens + t.max_phrase_tokens)
    return out


def sampling_kv_bytes(inp: Inputs) -> float | None:
    """The larger of :func:`kv_caches` (None when a shape needed is unknown)."""
    caches = [kv_cache_bytes(s, inp.dtype_bytes, n, t) if s else None for s, n, t in kv_caches(inp).values()]
    return None if None in caches else max(caches, default=0.0)


def rows_for(inp: Inputs) -> list[Row]:
    """Every strategy x LoRA off/on x gradient checkpointing off/on."""
    cfg, b, shape = inp.cfg, inp.dtype_bytes, inp.student.shape
    r = cfg.rollout
    vllm, kv = vllm_share(inp), sampling_kv_bytes(inp)
    other_teacher = inp.teacher.parameters * b if inp.teacher else 0
    out = []
    for strategy in STRATEGIES:
        for lora in (False, True):
            for ckpt in (False, True):
                trainable = (inp.lora_trainable or 0) if lora else inp.student.parameters
                w, g, o = model_state_bytes(inp.student.parameters, trainable, b, strategy, inp.gpus, lora)
                frozen = other_teacher + (inp.student.parameters * b if frozen_student_held(cfg, lora) else 0)
                act = shape and activation_bytes(shape, b, inp.micro_rows, r.max_prompt_length + r.max_new_tokens,
                                                 r.max_new_tokens, ckpt)
                complete = act is not None and kv is not None and (inp.lora_trainable is not None or not lora)
                total = total_bytes(w + g + o + frozen, act or 0.0, kv or 0.0, vllm, r.vllm_sleep)
                adapters_unknown = lora and inp.lora_trainable is None  # counted as 0, shown as ?
                out.append(Row(strategy, lora, ckpt, w, None if adapters_unknown else g,
                               None if adapters_unknown else o, act, kv, frozen, vllm, total,
                               verdict(total, inp.memory, complete)))
    return out


def plan(cfg: ThinkTuningConfig, gpus: int, gpu_memory_gb: float, params: int | None = None,
         teacher_params: int | None = None) -> list[Row]:
    """The table's rows for ``cfg`` on ``gpus`` GPUs of ``gpu_memory_gb`` GB each."""
    return rows_for(plan_inputs(cfg, gpus, gpu_memory_gb, params, teacher_params))


def _gb(x: float | None) -> str:
    return "?" if x is None else f"{x / GB:.1f}"


def render(inp: Inputs, rows: list[Row]) -> str:
    """The plan as Markdown: the inputs and formulas, then the table, then what it leaves out."""
    header = ("| strategy | weights | gradients | optimizer | activations | KV cache (sampling) | frozen teacher/ref "
              "| vLLM | total per GPU | fits? |")
    table = [header, "|" + "---|" * 10]
    for x in rows:
        cells = [x.name, *map(_gb, (x.weights, x.gradients, x.optimizer, x.activations, x.kv_cache, x.frozen,
                                    x.vllm, x.total)), x.fits]
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join([*arithmetic_lines(inp), "", *table, "", *footnotes(inp)]) + "\n"


def _n(x: int) -> str:
    return f"{x:,}"


def arithmetic_lines(inp: Inputs) -> list[str]:
    """The inputs and each column's formula with this config's numbers, so the table can be checked by hand."""
    cfg, b, s, p = inp.cfg, inp.dtype_bytes, inp.student.shape, inp.student.parameters
    r, o, t = cfg.rollout, cfg.optim, cfg.teacher
    seq = r.max_prompt_length + r.max_new_tokens
    name = cfg.preset or "config"
    lines = [f"# Memory plan: {name} on {inp.gpus} x {inp.memory / GB:g} GB", "",
             f"- student {inp.student.spec}: {_n(p)} parameters ({inp.student.source}); computes in "
             f"{compute_dtype(cfg)} ({b} bytes{AUTO_NOTE if cfg.model.dtype == 'auto' else ''})"]
    if s is not None:
        lines.append(f"- shape: h={s.hidden}, {s.layers} layers, {s.heads} query / {s.kv_heads} KV heads x "
                     f"{s.head_dim} (kv={s.kv_dim}), MLP I={s.intermediate}, vocab V={_n(s.vocab)}")
    cast = f" + autocast's {b}-byte copy" if b < 4 else ""
    lines.append(f"- full fine-tuning, bytes per parameter: fp32 weights 4{cast} + fp32 gradients 4 + AdamW "
                 f"{optimizer_bytes_per_param()} (2 fp32 moments 4 + 4)")
    if inp.lora_trainable is not None:
        lines.append(f"- LoRA r={cfg.lora.r} on {','.join(cfg.lora.target_modules)}: {_n(inp.lora_trainable)} "
                     f"trainable = r x (in + out) per adapted matrix x {s.layers} layers, fp32 (weights 4 + "
                     f"gradients 4 + moments 8 bytes); the frozen base keeps {b} bytes/parameter")
    prompts = o.mini_batch_prompts or r.prompts_per_step
    tokens = inp.micro_rows * seq
    lines.append(f"- micro-batch per GPU: min(optim.micro_batch_size={o.micro_batch_size}, ceil({r.group_size} x "
                 f"{prompts} / {inp.gpus}) = {math.ceil(r.group_size * prompts / inp.gpus)}) = {inp.micro_rows} rows "
                 f"x ({r.max_prompt_length} + {r.max_new_tokens}) = {_n(tokens)} tokens")
    if s is not None:
        full, ck = layer_activation_bytes(s, b, False), layer_activation_bytes(s, b, True)
        upcast = " + 8h (fp32 RMSNorm inputs)" if b < 4 else ""
        logits = inp.micro_rows * r.max_new_tokens * s.vocab * 4
        lines.append(f"- activations (an estimate, from the tensors a layer saves): per token per layer {b} x (6h + "
                     f"2kv + 4I){upcast} = {_n(full)} bytes, x {s.layers} layers x {_n(tokens)} tokens = "
                     f"{_gb(s.layers * full * tokens)} GB; with gradient checkpointing {b}h = {_n(ck)} bytes "
                     f"(x {s.layers} x {_n(tokens)} = {_gb(s.layers * ck * tokens)} GB) + one layer recomputed "
                     f"({_gb(full * tokens)} GB); both plus fp32 logits {inp.micro_rows} x {r.max_new_tokens} x V x 4 "
                     f"= {_gb(logits)} GB")
    for who, (shape, n, seq_len) in kv_caches(inp).items():
        rows = (f"min(rollout.batch_size={r.batch_size}, ceil({r.group_size} x {r.prompts_per_step} / {inp.gpus}) = "
                f"{math.ceil(r.group_size * r.prompts_per_step / inp.gpus)}) = {n}" if who == "student"
                else f"teacher.batch_size={n}")
        size = (f"x 2 x {shape.layers} layers x {shape.kv_dim} x {b} bytes = "
                f"{_gb(kv_cache_bytes(shape, b, n, seq_len))} GB" if shape else "(shape unknown: ?)")
        lines.append(f"- KV cache of the {who} while it generates: {rows} rows x {seq_len} tokens {size}")
    if frozen_student_held(cfg, False):
        by_teacher = cfg.guidance.asks_teacher() and t.model == "student-init"
        why = "teacher.model=student-init" if by_teacher else "loss.kl_coef>0"
        lines.append(f"- frozen teacher/reference ({why}): a copy of the student, {_gb(p * b)} GB; none with LoRA "
                     "(the student with its adapters off is that copy)")
    if inp.teacher is not None:
        lines.append(f"- teacher {inp.teacher.spec}: {_n(inp.teacher.parameters)} parameters ({inp.teacher.source}), "
                     f"{_gb(inp.teacher.parameters * b)} GB on every GPU")
    v = vllm_share(inp)
    if r.backend != "vllm":
        lines.append(f"- vLLM: not used (rollout.backend={r.backend})")
    elif r.vllm_mode != "colocate":
        lines.append("- vLLM: none on these GPUs (rollout.vllm_mode=server: it runs on others)")
    elif r.vllm_kv_cache_gb is None:
        lines.append(f"- vLLM: rollout.vllm_gpu_memory_utilization={r.vllm_gpu_memory_utilization} x "
                     f"{inp.memory / GB:g} GB = {_gb(v)} GB (its weights and KV cache)")
    else:
        lines.append(f"- vLLM: its own weights + rollout.vllm_kv_cache_gb={r.vllm_kv_cache_gb} GiB = {_gb(v)} GB")
    lines.append("- total per GPU = weights + gradients + optimizer + frozen + max(activations (+ vLLM unless "
                 "rollout.vllm_sleep), vLLM + KV cache); fits: yes <= 90% of the GPU, tight <= 100%, else no. "
                 "GB = 10^9 bytes")
    return lines


def footnotes(inp: Inputs) -> list[str]:
    """What the table leaves out or cannot do yet, in a few lines."""
    notes = [
        "FSDP2 / ZeRO-3 rows: configs/accelerate/fsdp.yaml or deepspeed-zero3.yaml (README, Multi-GPU). The "
        "frozen teacher is never sharded (it decodes on its own).",
        "Not counted: CUDA context and fragmentation (the 10% margin), DDP's gradient buckets (a second gradient "
        "copy unless gradient_as_bucket_view), the layers FSDP / ZeRO-3 gathers at a time, LoRA's r-wide "
        "activations.",
    ]
    if inp.student.shape is None:
        notes.append("?: unknown without the model's shape (activations, KV cache, LoRA): set model.student to a "
                     "folder holding its config.json; 'yes?' fits without them.")
    r, o = inp.cfg.rollout, inp.cfg.optim
    for key, value in (("rollout.prompts_per_step", r.prompts_per_step), ("optim.mini_batch_prompts",
                                                                          o.mini_batch_prompts)):
        if value is not None and value % inp.gpus:
            notes.append(f"{key}={value} is not divisible by {inp.gpus} GPUs: the trainer refuses that; choose a "
                         "GPU count that divides it.")
    return [f"- {n}" for n in notes]


def add_parser(sub) -> None:
    """Add ``plan`` to the CLI's subparsers."""
    p = sub.add_parser("plan", help="will it fit? memory per GPU of DDP / ZeRO-2 / FSDP2, with and without LoRA "
                                    "and gradient checkpointing, for a config")
    p.add_argument("--config", default=None, help="preset name or YAML file, as for train (default cpu-demo)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (training processes); default 1")
    p.add_argument("--gpu-memory", type=float, required=True, metavar="GB", help="memory per GPU in GB, e.g. 80")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, as for train")
    p.add_argument("--params", default=None, metavar="N",
                   help="the student's parameter count (e.g. 3.2e9), when it cannot be read here")
    p.add_argument("--teacher-params", default=None, metavar="N", help="the same for a separate teacher.model")


def cmd_plan(args) -> int:
    """``thinktuning plan``: print the Markdown plan."""
    from thinktuning.config.load import load_config

    cfg = load_config(args.config, args.overrides)
    counts = [None if n is None else parse_count(n) for n in (args.params, args.teacher_params)]
    inputs = plan_inputs(cfg, args.gpus, args.gpu_memory, *counts)
    print(render(inputs, rows_for(inputs)), end="", flush=True)
    return 0
