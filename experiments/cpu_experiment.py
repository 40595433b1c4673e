"""The CPU experiment: zero-shot vs GRPO vs ThinkTuning (model teacher) vs ThinkTuning (scripted teacher).

From the same starting model (the embedded SmolLM2-135M-Instruct), the same number of steps and the same seeds,
train the presets ``grpo-baseline``, ``cpu-demo`` and ``cpu-scripted``; evaluate each final checkpoint and the
untrained model on a held-out ``arithmetic`` split and a GSM8K test subset; write the ``thinktuning compare``
table (accuracy, response length, truncation, reflection rates) per seed.

Everything goes through the public CLI (``thinktuning train / eval / compare``), so the numbers are exactly what
a user would get. Finished pieces are skipped when the script is run again (a run folder with its final
checkpoint, an eval file that exists), so an interrupted experiment continues where it stopped.

    .venv/bin/python experiments/cpu_experiment.py --seeds 0 --steps 12
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("grpo-baseline", "cpu-demo", "cpu-scripted")
LABELS = {
    "zero-shot": "zero-shot",
    "grpo-baseline": "GRPO",
    "cpu-demo": "ThinkTuning (model teacher)",
    "cpu-scripted": "ThinkTuning (scripted teacher: research instrument)",
}


def run(cmd: list[str], log: Path) -> None:
    """Run one CLI command, appending its output to ``log``; stop the experiment if it fails."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    with log.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    print(f"  exit {code} after {time.time() - t0:.0f} s", flush=True)
    if code != 0:
        sys.exit(f"command failed (exit {code}); see {log}")


def finished(run_dir: Path, steps: int) -> bool:
    """Whether the run's last complete checkpoint is the final step (then training is skipped)."""
    from thinktuning.run.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return last is not None and last.name == f"step-{steps:06d}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--steps", type=int, default=12, help="training steps per run (the presets' 12 by default)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="runs/cpu-experiment",
                    help="folder for run folders (checkpoints: ~0.5 GB each), eval files and tables")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                    help="folder with gsm8k/test.jsonl (or use the hub when online)")
    ap.add_argument("--limit", type=int, default=60, help="problems per benchmark (held-out arithmetic, GSM8K test)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--answer-fallback", choices=("none", "last_number"), default="last_number",
                    help="as the presets' training reward: SmolLM2-135M almost never writes \\boxed{}, so with "
                         "'none' every model scores ~0 and the table says nothing")
    ap.add_argument("--phase", choices=["all", "train", "eval"], default="all")
    args = ap.parse_args(argv)

    exe = [sys.executable, "-m", "thinktuning.cli"]
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "experiment.log"
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    t0 = time.time()
    timings: dict[str, float] = {}

    if args.phase in ("all", "train"):
        for seed in seeds:
            for cfg in configs:
                run_dir = out / "runs" / f"{cfg}-seed{seed}"
                if finished(run_dir, args.steps):
                    continue
                t = time.time()
                resume = ["--resume"] if run_dir.is_dir() else []
                run([*exe, "train", "--config", cfg, "--max-steps", str(args.steps), "--seed", str(seed),
                     "--output-dir", str(run_dir), "--quiet", *resume], log)
                timings[f"train {cfg} seed {seed}"] = time.time() - t

    if args.phase in ("all", "eval"):
        common = ["--benchmarks", "arithmetic,gsm8k", "--data-dir", args.data_dir, "--max-new-tokens",
                  str(args.max_new_tokens), "--samples", "1", "--answer-fallback", args.answer_fallback]
        limits = ["--limit", str(args.limit)]
        evals = out / "evals"
        evals.mkdir(exist_ok=True)
        zero = evals / "zero-shot.json"
        if not zero.is_file():
            t = time.time()
            run([*exe, "eval", "--model", "smollm2-135m-instruct", *common, *limits, "--output", str(zero)], log)
            timings["eval zero-shot"] = time.time() - t
        for seed in seeds:
            files = [zero]
            for cfg in configs:
                target = evals / f"{cfg}-seed{seed}.json"
                if not target.is_file():
                    t = time.time()
                    run([*exe, "eval", "--model", str(out / "runs" / f"{cfg}-seed{seed}"), *common, *limits,
                         "--output", str(target)], log)
                    timings[f"eval {cfg} seed {seed}"] = time.time() - t
                files.append(target)
            table = out / f"table-seed{seed}.md"
            run([*exe, "compare", *map(str, files), "--output", str(table)], log)
            print(table.read_text())

    (out / "timings.json").write_text(json.dumps({"total_s": time.time() - t0, **timings}, indent=1))
    print(f"done in {(time.time() - t0) / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
