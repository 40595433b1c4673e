"""The ``eval`` and ``compare`` subcommands (their arguments and handlers), kept out of ``cli.py`` so that file
stays a short dispatcher. Heavy imports (torch, transformers) happen only inside the handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thinktuning.eval.benchmarks import BENCHMARKS
from thinktuning.eval.evaluate import RESULTS_NAME
from thinktuning.eval.settings import BACKEND_NAMES, EvalSettings

DEFAULT_BENCHMARKS = "gsm8k,math500,aime24,aime25,amc23,arithmetic"


def add_parsers(sub) -> None:
    """Add ``eval`` and ``compare`` to the CLI's subparsers."""
    d = EvalSettings()
    ev = sub.add_parser("eval", help="evaluate a model, checkpoint or run folder on benchmarks (results JSON)")
    ev.add_argument("--model", required=True, metavar="SPEC_OR_RUN_DIR",
                    help="a model spec as the trainer takes (alias, HF folder, .gguf, hub id), a checkpoint folder, "
                         "or a run folder (its last checkpoint)")
    ev.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS, metavar="NAME,NAME,...",
                    help=f"any of {','.join(BENCHMARKS)} (default: {DEFAULT_BENCHMARKS}; gpqa-diamond is gated on "
                         "the hub, so it is opt-in)")
    ev.add_argument("--data-dir", default=None, metavar="DIR",
                    help="local benchmark copies as DIR/<name>/test.jsonl (gpqa: DIR/gpqa-diamond/test.csv); used "
                         "before the hub")
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each benchmark")
    ev.add_argument("--samples", type=int, default=d.samples, metavar="K",
                    help="responses per item; 1 = greedy (accuracy), K > 1 = sampled (avg@K, pass@k, maj@K)")
    ev.add_argument("--temperature", type=float, default=d.temperature, help="for --samples > 1")
    ev.add_argument("--top-p", type=float, default=d.top_p, help="for --samples > 1")
    ev.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, metavar="M")
    ev.add_argument("--levels", default="1,2", metavar="L,L", help="arithmetic levels (1-4), default 1,2")
    ev.add_argument("--answer-fallback", choices=("none", "last_number"), default=d.answer_fallback,
                    help="score a response without \\boxed{} by its last number (default none, as the paper)")
    ev.add_argument("--backend", choices=BACKEND_NAMES, default=d.backend, help="generation engine")
    ev.add_argument("--batch-size", type=int, default=d.batch_size, help="responses generated together")
    ev.add_argument("--base-url", default=None, metavar="URL",
                    help="--backend openai: the server's API root (e.g. http://127.0.0.1:8000/v1); --model is then "
                         "the served model's name")
    ev.add_argument("--server-model", default=None, metavar="NAME",
                    help="--backend openai: model name to request if not --model ('auto': the server's first)")
    ev.add_argument("--api-key-env", default=None, metavar="VAR",
                    help="--backend openai: environment variable holding the API key (sent as a Bearer header)")
    ev.add_argument("--concurrency", type=int, default=d.concurrency, help="--backend openai: requests in flight")
    ev.add_argument("--timeout", type=float, default=d.timeout_s, help="--backend openai: seconds per request")
    ev.add_argument("--vllm-kv-cache-gb", type=float, default=None, metavar="GB",
                    help="--backend vllm: KV cache size (default 1 on CPU; on a GPU, 90%% of its memory)")
    ev.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                    help="--backend transformers or vllm: the weights' precision; auto: bfloat16 where the device "
                         "computes it fast, else float32 (the dtype chosen is recorded in the results)")
    ev.add_argument("--seed", type=int, default=d.seed, help="sampling, GPQA choice order, arithmetic problems")
    ev.add_argument("--output", default=None, metavar="FILE.json",
                    help=f"results file (default: RUN_DIR/{RESULTS_NAME} for a run folder, else ./{RESULTS_NAME})")
    cmp = sub.add_parser("compare", help="one Markdown table of eval results, a column per run, deltas to the first")
    cmp.add_argument("results", nargs="+", metavar="RESULT_OR_RUN",
                     help=f"eval results JSON files, or run folders holding {RESULTS_NAME}")
    cmp.add_argument("--output", default=None, metavar="FILE.md", help="write the table here (default: print it)")


def cmd_eval(args: argparse.Namespace) -> int:
    from thinktuning.errors import ConfigError, EvalError
    from thinktuning.eval.benchmarks import parse_benchmarks
    from thinktuning.eval.evaluate import EvalRequest, failed_benchmarks, run_eval

    try:
        levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--levels expects numbers separated by commas (e.g. 1,2), got {args.levels!r}") from None
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    dtype = args.dtype
    if dtype == "auto":
        import torch

        from thinktuning.models.precision import choose_precision

        dtype = choose_precision("auto", "cuda" if torch.cuda.is_available() else "cpu").dtype
    settings = EvalSettings(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, answer_fallback=args.answer_fallback,
                            limit=args.limit, levels=levels, backend=args.backend, batch_size=args.batch_size,
                            dtype=dtype, base_url=args.base_url, server_model=args.server_model,
                            api_key_env=args.api_key_env, vllm_kv_cache_gb=args.vllm_kv_cache_gb,
                            concurrency=args.concurrency, timeout_s=args.timeout)
    req = EvalRequest(model=args.model, benchmarks=parse_benchmarks(args.benchmarks), settings=settings,
                      data_dir=args.data_dir, output=args.output)
    scrub = settings.scrubber()  # the key and URL passwords never reach the terminal
    results = run_eval(req, log=lambda s: print(scrub(s), file=sys.stderr, flush=True))
    macro = results["macro_average"]
    print(f"macro average over {len(results['benchmarks'])} benchmark(s): accuracy {macro['accuracy']:.3f}; "
          f"wall time {results['wall_time_s']:.0f} s", flush=True)
    print(scrub(f"wrote {', '.join(req.written)}"), flush=True)
    failed = failed_benchmarks(results)
    if failed:  # accuracy 0 from a server that refused every request must not pass for a result
        first = next(iter(failed.values()))
        raise EvalError(scrub(
            f"every request to the server failed for {', '.join(failed)} ({first['count']} of {first['of']}; first "
            f"error: {first['first_error']}); {req.written[0]} records it, marked incomplete. Check that the server "
            "is up, --base-url, the model name (--model or --server-model) and --api-key-env, then run again"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from thinktuning.eval.compare import compare_table

    table = compare_table(args.results)
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
        print(f"wrote {args.output}", flush=True)
    else:
        print(table, end="")
    return 0
