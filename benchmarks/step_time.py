"""Step time of one GRPO step: TRL's ``GRPOTrainer`` vs ``thinktuning`` (guidance off) vs ``thinktuning`` with 25% of
rollouts guided by the frozen-copy teacher, on the same work.

    .venv-vllm/bin/python benchmarks/step_time.py [--steps 3] [--warmup 1] [--rounds 2] [--out FILE.json]

Same work for every variant: the embedded SmolLM2-135M-Instruct in float32, the built-in arithmetic task (levels
1-2) with the same prompts in the same order, 2 prompts x G=8 = 16 completions of at most 128 new tokens per step,
temperature 1, top-p 1, one PPO epoch, no KL (TRL: ``beta=0``, so no reference model), one optimizer step per 16
completions in micro-batches of 8, AdamW at lr 1e-5. TRL's ``bf16`` default is switched off (the comparison is in
float32); its ``gradient_checkpointing`` default (on) is measured both ways, as ``trl`` and ``trl-nogc``.

thinktuning variants: ``tt-grpo`` (guidance off, defaults), ``tt-grpo-noskip`` (``optim.skip_zero_advantage=false``:
every row through forward and backward, as TRL does), ``tt-grpo-gc`` (the same with
``model.gradient_checkpointing=true``: its peak memory and update time against ``tt-grpo-noskip``), ``tt-guided``
(25% of each group's finished rollouts guided, constant schedule), ``tt-grpo-vllm`` (student rollouts on vLLM in
float32, weights pushed every step).

Precision: a variant name may end in ``@bf16`` (``trl-nogc@bf16``: TRL's ``bf16=True``; ``tt-guided@bf16``:
``model.dtype=bfloat16``, i.e. autocast with float32 master weights, what ``auto`` picks on a CPU with AVX512-BF16 or
AMX). Without it every variant is float32, as before.

Each variant runs in a fresh process (``--child``): load, ``--warmup`` untimed steps, then ``--steps`` timed ones.
The variants alternate, ``--rounds`` times, so slow drifts of a shared machine hit all of them alike; the report is
the median over all timed steps of a variant, with a per-phase breakdown (student generation, teacher generation,
log-probs, update = forward + backward + optimizer). It runs under ``.venv-vllm``, which holds the pinned TRL and
the same torch and transformers as ``.venv`` (``scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_VERSION = "1.16.0"
STEP = dict(prompts=2, group=8, max_new_tokens=128, micro_batch=8, lr=1e-5, seed=0)
VARIANTS = ("trl", "trl-nogc", "tt-grpo", "tt-grpo-noskip", "tt-grpo-gc", "tt-guided", "tt-grpo-vllm")
TT_SETS = [
    f"rollout.prompts_per_step={STEP['prompts']}", f"rollout.group_size={STEP['group']}",
    f"rollout.max_new_tokens={STEP['max_new_tokens']}", f"optim.micro_batch_size={STEP['micro_batch']}",
    f"optim.lr={STEP['lr']}", "optim.ppo_epochs=1", "optim.warmup_steps=0", "loss.kl_coef=0", "save_every=0",
    "quiet=true", "log_rollouts=false",
]
GUIDED_SETS = ["guidance.schedule=constant", "guidance.p_start=0.25", "guidance.p_end=0.25",
               "guidance.cutoff_epsilon=null"]


# ----------------------------------------------------------------------------------------- children


def split_variant(name: str) -> tuple[str, bool]:
    """``tt-guided@bf16`` -> (``tt-guided``, True)."""
    base, _, precision = name.partition("@")
    if base not in VARIANTS or precision not in ("", "bf16"):
        raise SystemExit(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}, optionally ending in @bf16")
    return base, precision == "bf16"


def tt_child(variant: str, steps: int, warmup: int, out_dir: str, bf16: bool = False) -> list[dict]:
    """thinktuning's own trainer; phases come from its ``time/*`` metrics."""
    from thinktuning import ThinkTuningTrainer, load_config

    sets = [*TT_SETS, f"max_steps={steps + warmup}", f"output_dir={out_dir}",
            f"model.dtype={'bfloat16' if bf16 else 'float32'}"]
    sets += GUIDED_SETS if variant == "tt-guided" else ["guidance.enabled=false"]
    if variant in ("tt-grpo-noskip", "tt-grpo-gc"):  # every row through forward and backward, as TRL does
        sets.append("optim.skip_zero_advantage=false")
    if variant == "tt-grpo-gc":  # activations recomputed in the backward instead of kept from the forward
        sets.append("model.gradient_checkpointing=true")
    if variant == "tt-grpo-vllm":  # student rollouts on vLLM (float32, the trainer's dtype), weights pushed per step
        sets.append("rollout.backend=vllm")
    tr = ThinkTuningTrainer(load_config("cpu-demo", sets), overwrite=True)
    rows = []
    for s in range(steps + warmup):
        m = tr.step(s)
        if s >= warmup:
            gen, teach, upd = m["time/student_generate"], m["time/teacher_generate"], m["time/update"]
            rows.append({"step": m["time/step"], "student_generate": gen, "teacher_generate": teach,
                         "logprobs": 0.0,  # one PPO epoch: pi_old is the update's own forward, no extra pass
                         "update": upd, "other": m["time/step"] - gen - teach - upd,
                         "weight_push": m.get("time/weight_push", 0.0),
                         "guided": m.get("guidance/guided", 0), "rows_skipped": m.get("loss/rows_skipped", 0),
                         "reward": m["reward/mean"], "tokens": m["response_length/mean"] * 16,
                         "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    tr.close()
    return rows


def trl_child(variant: str, steps: int, warmup: int, out_dir: str, bf16: bool = False) -> list[dict]:
    """TRL's GRPOTrainer on the same model, prompts and settings; phases from TRL's own profiling timers."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from thinktuning import ThinkTuningTrainer, load_config
    from thinktuning.rewards.functions import correctness_reward

    if trl.__version__ != TRL_VERSION:
        sys.exit(f"this benchmark is pinned to trl=={TRL_VERSION}, found {trl.__version__}")
    # the same prompts in the same order as thinktuning's steps (its seeded data order), TRL told not to shuffle
    from thinktuning.data.load import load_examples
    from thinktuning.models.resolve import resolve

    probe = ThinkTuningTrainer.__new__(ThinkTuningTrainer)  # only its data order is used: no model is loaded
    probe.cfg = load_config("cpu-demo", [*TT_SETS, f"max_steps={steps + warmup}"])
    d = probe.cfg.data
    probe.examples, _ = load_examples(d.name, d.source, d.split, limit=2000, seed=probe.cfg.seed, levels=d.levels)
    spec = resolve(probe.cfg.model.student)
    order = [ex for s in range(steps + warmup) for ex in probe._step_examples(s)]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.prompt}], "reference": ex.reference}
                              for ex in order])
    tok = AutoTokenizer.from_pretrained(spec.path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def reward(prompts, completions, reference, completion_ids, **_):
        cut = [not ids or ids[-1] != eos for ids in completion_ids]
        return correctness_reward(prompts, [c[0]["content"] for c in completions], reference, cut,
                                  answer_fallback="last_number")

    timings: list[tuple[str, float]] = []
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration):
        timings.append((self.name, duration))
        return original(self, duration)

    profiling.ProfilingContext._log_metrics = record
    rows: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timings.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            total = time.perf_counter() - self.t0
            by = {}
            for name, dur in timings:
                key = name.split(".", 1)[-1]
                by[key] = by.get(key, 0.0) + dur
            gen = by.get("transformers.generate", 0.0)
            prep = by.get("_prepare_inputs", 0.0)
            # _prepare_inputs = generation + rewards + TRL's own batching (with 1 iteration and beta 0 it makes no
            # log-prob pass); what is not generation goes to "other". The loss forward, backward and optimizer step
            # come after it: "update"
            rows.append({"step": total, "student_generate": gen, "teacher_generate": 0.0, "logprobs": 0.0,
                         "update": total - prep, "other": prep - gen})

    cfg = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=STEP["micro_batch"],
        gradient_accumulation_steps=STEP["prompts"] * STEP["group"] // STEP["micro_batch"],
        num_generations=STEP["group"], max_completion_length=STEP["max_new_tokens"], temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, num_iterations=1, learning_rate=STEP["lr"], lr_scheduler_type="constant",
        max_steps=steps + warmup, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=bf16,
        gradient_checkpointing=variant == "trl", shuffle_dataset=False, seed=STEP["seed"], dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=spec.path, reward_funcs=reward, args=cfg, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return rows[warmup:]


# --------------------------------------------------------------------------------------------- parent


def run_child(variant: str, steps: int, warmup: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(steps), "--warmup", str(warmup),
               "--child-out", str(out), "--child-dir", str(Path(tmp) / "run")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        rows = json.loads(out.read_text())
        print(f"  {variant}: {len(rows)} timed steps in a {time.perf_counter() - t0:.0f} s process: "
              + ", ".join(f"{r['step']:.1f}" for r in rows), flush=True)
        return rows


def summarize(results: dict[str, list[dict]]) -> dict:
    table = {}
    for v, rows in results.items():
        if not rows:
            continue
        table[v] = {k: statistics.median(r[k] for r in rows)
                    for k in ("step", "student_generate", "teacher_generate", "logprobs", "update", "other")}
        table[v]["n"] = len(rows)
        if all("peak_rss_gb" in r for r in rows):  # the process's high-water mark (Linux reports KiB)
            table[v]["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rows)
    return table


def print_table(table: dict) -> None:
    """Ratios to TRL's fastest variant (whatever its precision) and to thinktuning GRPO with every row through the
    update (``tt-grpo-noskip``) at the same precision."""
    trl_best = min((r["step"] for v, r in table.items() if v.startswith("trl")), default=None)
    print("\n| variant | steps | step (s) | student gen | teacher gen | log-probs | update | other | vs TRL best |"
          " vs tt-grpo-noskip, same precision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v, r in table.items():
        base = table.get("tt-grpo-noskip" + ("@bf16" if v.endswith("@bf16") else ""), {}).get("step")
        vs_trl = f"{r['step'] / trl_best:.2f}x" if trl_best else "-"
        vs_tt = f"{r['step'] / base:.2f}x" if base and not v.startswith("trl") else "-"
        print(f"| {v} | {r['n']} | {r['step']:.1f} | {r['student_generate']:.1f} | {r['teacher_generate']:.1f} | "
              f"{r['logprobs']:.1f} | {r['update']:.1f} | {r['other']:.1f} | {vs_trl} | {vs_tt} |"
              + (f" peak RSS {r['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in r else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every process")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", help="write the raw rows and the table as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        base, bf16 = split_variant(a.child)
        fn = trl_child if base.startswith("trl") else tt_child
        rows = fn(base, a.steps, a.warmup, a.child_dir, bf16)
        Path(a.child_out).write_text(json.dumps(rows))
        return
    variants = a.variants.split(",")
    for v in variants:
        split_variant(v)  # refuse a typo before the first child starts
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for v in variants:
            results[v] += run_child(v, a.steps, a.warmup)
    table = summarize(results)
    print_table(table)
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": results, "table": table, "settings": STEP}, indent=1))


if __name__ == "__main__":
    main()
