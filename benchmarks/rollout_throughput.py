"""Tokens/s of the student rollout path at batch 8 and 32, next to bare ``model.generate`` and the compute ceiling,
with the log-prob agreement between each rollout engine and the trainer's forward pass.

    .venv-vllm/bin/python benchmarks/rollout_throughput.py [--batches 8,32] [--new-tokens 128] [--repeats 3]
        [--vllm-dtype float32|bfloat16]

Every engine samples ``--new-tokens`` tokens (stopping at end-of-turn) from one arithmetic prompt repeated
``batch`` times, embedded SmolLM2-135M-Instruct (float32 weights), temperature 1. ``ours-bf16`` is the trainer's
sampler as ``model.dtype=bfloat16`` (or ``auto`` on a CPU with native bf16) runs it: under autocast, its log-probs
compared with the update's autocast forward. Reported per engine and batch: the
median tokens/s over ``--repeats`` runs (after one warm-up run) and, for the engines that return the log-probability
of each sampled token, the mean absolute difference to the trainer's ``logprobs.token_logprobs`` on the same tokens.

The ceiling is measured, not quoted: the fp32 and bf16 GFLOP/s of a 1024x1024 matmul on this machine, divided by
the model's 2 x parameters FLOPs per token. vLLM runs only where it imports (``.venv-vllm``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROMPT = "Tom has 27 apples and buys 82 more. How many apples does he have now?"


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def agreement(model, prompt: list[int], rollouts, engine_logps, pad_id: int, bf16: bool = False) -> float:
    """Mean |engine log-prob - trainer log-prob| over all sampled tokens (``bf16``: the trainer's forward under
    autocast, as the update runs it in bf16)."""
    from thinktuning.train.logprobs import collate, token_logprobs

    diffs, count = 0.0, 0
    for k in range(0, len(rollouts), 8):
        chunk = rollouts[k : k + 8]
        batch = collate([prompt] * len(chunk), list(chunk), pad_id=pad_id)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            lp = token_logprobs(model, batch)
        for i, r in enumerate(chunk):
            n = len(r)
            diffs += float((lp[i, :n] - torch.tensor(engine_logps[k + i][:n])).abs().sum())
            count += n
    return diffs / max(count, 1)


def _rate(tokens_per_s: float) -> str:
    """Whole tokens/s, or two decimals below 10 (a heavily shared machine must not print 0)."""
    return f"{tokens_per_s:.0f}" if tokens_per_s >= 10 else f"{tokens_per_s:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--engines", default="ours,ours-bf16,ours-whole,generate,vllm",
                    help="which to run: ours (rollout.sampler.sample), ours-bf16 (the same under bf16 autocast), "
                         "ours-whole (ended rows kept in the batch: compact=False), generate (bare model.generate, "
                         "float32), vllm")
    ap.add_argument("--vllm-dtype", default="float32", choices=("float32", "bfloat16"))
    a = ap.parse_args()
    from thinktuning.models.load import encode_user_turns, end_of_turn_id, load_model, load_tokenizer
    from thinktuning.models.resolve import resolve
    from thinktuning.rollout.sampler import sample

    spec = resolve("smollm2-135m-instruct")
    tok = load_tokenizer(spec)
    model = load_model(spec, "float32").eval()
    eos = end_of_turn_id(tok)
    prompt = encode_user_turns(tok, [PROMPT])[0]
    n_params = sum(p.numel() for p in model.parameters())
    f32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16, n=512, reps=3)
    flop_per_token = 2 * n_params
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n_params / 1e6:.1f} M parameters, CPU "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"matmul: float32 {f32:.0f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s -> ceiling "
          f"{f32 * 1e9 / flop_per_token:.0f} tokens/s float32, {bf16 * 1e9 / flop_per_token:.0f} bfloat16")

    engines = {}

    def ours(b, seed, compact=True):
        r = sample(model, [prompt] * b, max_new_tokens=a.new_tokens, eos_id=eos, pad_id=eos,
                   generator=torch.Generator().manual_seed(seed), batch_size=b, compact=compact)
        return [x.response_ids for x in r], [x.logprobs for x in r]

    def ours_bf16(b, seed):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(b, seed)

    def ours_whole(b, seed):
        return ours(b, seed, compact=False)

    def bare(b, seed):
        torch.manual_seed(seed)
        ids = torch.tensor([prompt] * b)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=a.new_tokens, pad_token_id=eos, eos_token_id=eos)
        rows = []
        for row in out[:, len(prompt):].tolist():
            rows.append(row[: row.index(eos) + 1] if eos in row else row)
        return rows, None

    wanted = set(a.engines.split(","))
    if "ours" in wanted:
        engines["thinktuning sample (transformers)"] = ours
    if "ours-bf16" in wanted:
        engines["thinktuning sample under bf16 autocast (model.dtype=bfloat16)"] = ours_bf16
    if "ours-whole" in wanted:
        engines["thinktuning sample, ended rows kept in the batch (compact=False)"] = ours_whole
    if "generate" in wanted:
        engines["bare model.generate"] = bare
    if not a.no_vllm and "vllm" in wanted:
        try:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            import vllm

            llm = vllm.LLM(model=spec.path, dtype=a.vllm_dtype, max_model_len=len(prompt) + a.new_tokens + 8,
                           enforce_eager=True, kv_cache_memory_bytes=2**30, seed=0,
                           logprobs_mode="processed_logprobs")

            def with_vllm(b, seed):
                params = [vllm.SamplingParams(temperature=1.0, max_tokens=a.new_tokens, seed=seed + i, logprobs=0,
                                              stop_token_ids=[eos], detokenize=False) for i in range(b)]
                outs = llm.generate([{"prompt_token_ids": prompt}] * b, params, use_tqdm=False)
                ids = [list(o.outputs[0].token_ids) for o in outs]
                lps = [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, i, strict=True)]
                       for o, i in zip(outs, ids, strict=True)]
                return ids, lps

            engines[f"vLLM {vllm.__version__} (rollout.backend=vllm), {a.vllm_dtype}"] = with_vllm
        except ImportError as err:
            print(f"vLLM not importable here ({err}); run under .venv-vllm for its row")

    print("\n| engine | batch | tokens/s (median) | runs | tokens/run | mean abs log-prob diff vs trainer |")
    print("|---|---|---|---|---|---|")
    for b in [int(x) for x in a.batches.split(",")]:
        rates: dict[str, list[float]] = {name: [] for name in engines}
        diff: dict[str, float | None] = dict.fromkeys(engines)
        ntok: dict[str, int] = {}
        for fn in engines.values():
            fn(b, 999)  # warm-up
        for r in range(a.repeats):  # the engines alternate, so slow spells of a shared machine hit them alike
            for name, fn in engines.items():
                t = time.perf_counter()
                ids, lps = fn(b, r)
                el = time.perf_counter() - t
                ntok[name] = sum(len(x) for x in ids)
                rates[name].append(ntok[name] / el)
                if lps is not None and r == 0:
                    diff[name] = agreement(model, prompt, ids, lps, eos, bf16="bf16" in name or "bfloat16" in name)
        for name in engines:
            d = f"{diff[name]:.2e}" if diff[name] is not None else "n/a (no per-token log-probs)"
            print(f"| {name} | {b} | {_rate(statistics.median(rates[name]))} | {a.repeats} | {ntok[name]} | {d} |",
                  flush=True)


if __name__ == "__main__":
    main()
