"""The evidence experiment (issue 15): does guidance teach the student what plain GRPO cannot?

Arms, all from the embedded SmolLM2-135M-Instruct with the same data order, seeds, steps, learning rate and
evaluation. Each (rule, arm, seed) is one *piece*: train, evaluate, then commit the small results (metrics,
rollouts compressed, the eval files; never checkpoints) under ``experiments/results/<rule>/<arm>/seed<k>/``. A piece
whose ``piece.json`` is committed is skipped, so the experiment continues from a fresh clone in a later session, and
the pieces finished so far always form a readable table (``experiments/analyze.py``).

    .venv/bin/python experiments/evidence.py                      # the budget order below, 2 pieces side by side
    .venv/bin/python experiments/evidence.py --pieces paper/grpo/0,paper/tt-scripted-const/0
    .venv/bin/python experiments/evidence.py --list               # what is done and what is left

Every setting whose default another open issue may change is pinned here (``PINNED``), and each piece records the
commit, torch version and CPU capability it ran with, so pieces run on different days stay comparable.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"

STEPS = 60
"""Training steps per run: the issue's minimum. A scripted-teacher step is ~35-60 s on one shared core, so a piece
(train + evaluation) is about an hour, and two run side by side on a 2-core machine."""

PINNED = [
    "model.dtype=float32", "data.name=arithmetic", "data.levels=[1,2]", "rollout.prompts_per_step=4",
    "rollout.group_size=4", "rollout.max_new_tokens=96", "rollout.temperature=1.0", "rollout.top_p=1.0",
    "loss.aggregation=token-mean", "loss.advantage=grpo", "loss.kl_coef=0.0", "loss.clip_low=0.2",
    "loss.clip_high=0.2", "optim.lr=1.0e-5", "optim.micro_batch_size=4", "optim.ppo_epochs=1",
    "guidance.mask_scope=rollout", "guidance.continuation=teacher", "reward.zero_if_truncated=true",
    "save_every=10", "keep_last=1",
]
"""Settings every training run gets explicitly, so a later change of a preset default cannot change a piece."""

CONSTANT = ["guidance.schedule=constant", "guidance.p_start=0.25", "guidance.p_end=0.25",
            "guidance.cutoff_epsilon=null"]  # one guided rollout per group of 4, every step

ARMS: dict[str, tuple[str | None, list[str], str]] = {
    "zero-shot": (None, [], "zero-shot (no training)"),
    "grpo": ("grpo-baseline", ["loss.shaping=aas"], "GRPO"),
    "tt-scripted-paper": ("cpu-scripted", ["loss.shaping=aas", "guidance.schedule=linear", "guidance.p_start=0.10",
                                           "guidance.p_end=0.01", "guidance.decay_fraction=0.3333333333",
                                           "guidance.cutoff_epsilon=0.05"],
                          "ThinkTuning, scripted teacher, paper schedule"),
    "tt-scripted-const": ("cpu-scripted", ["loss.shaping=aas", *CONSTANT],
                          "ThinkTuning, scripted teacher, constant schedule"),
    "tt-model-const": ("cpu-demo", ["loss.shaping=aas", *CONSTANT], "ThinkTuning, model teacher, constant schedule"),
    "tt-scripted-const-luffy": ("cpu-scripted", ["loss.shaping=luffy", *CONSTANT],
                                "ThinkTuning, scripted teacher, constant schedule, LUFFY shaping"),
    "tt-scripted-const-skip": ("cpu-scripted", ["loss.shaping=aas", *CONSTANT, "guidance.boundary=skip"],
                               "ThinkTuning, scripted teacher, constant schedule, splice boundary not trained "
                               "(our variant)"),
    # the guidance family (issue 17): the same pinned settings and constant schedule, another guide in place of the
    # teacher's reason; expert and hint load no teacher, refine asks the scripted one for its critique
    "family-expert": ("cpu-expert", ["loss.shaping=luffy", *CONSTANT],
                      "guidance family: expert solution replaces a rollout (LUFFY-style, luffy shaping)"),
    "family-hint": ("cpu-hint", ["loss.shaping=aas", *CONSTANT, "guidance.hint_fraction=0.5",
                                 "guidance.hint_loss=mask"],
                    "guidance family: half the worked solution as a hint, student continues"),
    "family-refine": ("cpu-refine", ["loss.shaping=aas", *CONSTANT],
                      "guidance family: scripted critique, student refines (Critique-GRPO-style)"),
    "grpo-format": ("grpo-baseline", ["loss.shaping=aas",
                                      "reward.functions=[experiments/format_reward.py:boxed_number]"],
                    "GRPO + boxed-number format reward (our skeptic's baseline)"),
    # needs the trainer to pass trainer_state to reward functions (since 2026-11-30; older --code stops, saying so)
    "grpo-format-fade": ("grpo-baseline", ["loss.shaping=aas",
                                           "reward.functions=[experiments/format_reward.py:fading_boxed_number]"],
                         "GRPO + boxed-number format reward fading to 0 by step 20 (our control for the paper's "
                         "schedule)"),
}
RULES = {"paper": "none", "lenient": "last_number"}
"""Reward rule -> reward.answer_fallback: the paper's (only a \\boxed{} answer scores) and the lenient one."""

FIRST = ["zero-shot", "grpo", "tt-scripted-const", "tt-model-const", "grpo-format"]
THEN = ["tt-scripted-paper", "tt-scripted-const-luffy", "tt-scripted-const-skip"]
CONTROLS = ["grpo-format-fade"]
"""Baselines added after the first results: a format bonus that fades like the paper's guidance schedule (the
constant bonus can be earned by boxing a number from the question, RESULTS.md point 10)."""
CONTROL_SEEDS = (0, 1, 3, 4)
"""The fading bonus pays only if the student boxes a number before step 20. With the same seed its samples are the
constant bonus's until the first reward, which came at step 30 and 29 on seeds 0 and 2 (RESULTS.md point 10): on
seed 2 this arm would repeat zero-shot, as it did on seed 0."""
FAMILY = ["family-expert", "family-hint", "family-refine"]
"""Issue 17's side-by-side run of the guidance family, after issue 15's pieces; compared with ``tt-scripted-const``
(ThinkTuning with the same scripted teacher and schedule) and the two GRPO baselines."""


DECIDING = ["tt-scripted-const", "grpo-format"]
"""The pair the claim rests on: ThinkTuning against the baseline that also gets a format signal. With 3 seeds each,
an exact permutation test over seed means cannot go below p = 0.10, so their seeds 3 and 4 come right after the
first three seeds (with 5 + 5, full separation gives p = 0.008). Plain GRPO gets no more seeds under the paper's
rule: it never gets a reward there, so it never updates."""


def budget_order(seeds: int = 3) -> list[str]:
    """The issue's order, with one change: arms 1, 2, 4, 5, 7 with 3 seeds (seed by seed, so every arm has a seed
    early), then seeds 3-4 of the deciding pair (moved up, see ``DECIDING``), then arms 3 and 6 and our
    splice-boundary variant, then the lenient rule's GRPO and constant-schedule arms, then the fading format
    baseline (``CONTROLS``, ``CONTROL_SEEDS``), then the guidance family.
    The lenient rule has no zero-shot piece of its own: untrained, the rule changes nothing but the scoring, which
    ``analyze.py`` does for both rules from ``paper/zero-shot/0``'s responses."""
    out = ["paper/zero-shot/0"]
    for s in range(seeds):
        out += [f"paper/{a}/{s}" for a in FIRST if a != "zero-shot"]
    for s in range(seeds, 5):
        out += [f"paper/{a}/{s}" for a in DECIDING]
    for s in range(seeds):
        out += [f"paper/{a}/{s}" for a in THEN]
    for s in range(seeds):
        out += [f"lenient/{a}/{s}" for a in ("grpo", "tt-scripted-const")]
    for s in CONTROL_SEEDS:
        out += [f"paper/{a}/{s}" for a in CONTROLS]
    for s in range(seeds):
        out += [f"paper/{a}/{s}" for a in FAMILY]
    return out


@dataclass(frozen=True)
class Piece:
    rule: str
    arm: str
    seed: int

    @classmethod
    def parse(cls, text: str) -> Piece:
        try:
            rule, arm, seed = text.strip().split("/")
            piece = cls(rule, arm, int(seed))
        except ValueError:
            raise SystemExit(f"piece {text!r} must look like RULE/ARM/SEED, e.g. paper/grpo/0") from None
        if rule not in RULES or arm not in ARMS:
            raise SystemExit(f"piece {text!r}: rules {sorted(RULES)}, arms {sorted(ARMS)}")
        return piece

    @property
    def name(self) -> str:
        return f"{self.rule}/{self.arm}/{self.seed}"

    def results(self, root: Path = RESULTS) -> Path:
        return root / self.rule / self.arm / f"seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / self.rule / self.arm / f"seed{self.seed}"

    def done(self, root: Path = RESULTS) -> bool:
        return (self.results(root) / "piece.json").is_file()


def train_command(piece: Piece, run_dir: Path, steps: int, resume: bool) -> list[str]:
    preset, extra, _ = ARMS[piece.arm]
    assert preset is not None
    sets = [*PINNED, f"reward.answer_fallback={RULES[piece.rule]}", *extra]
    cmd = [sys.executable, "-m", "thinktuning.cli", "train", "--config", preset, "--max-steps", str(steps),
           "--seed", str(piece.seed), "--output-dir", str(run_dir), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return [*cmd, "--resume"] if resume else cmd


EVALS = {  # name -> (samples, limit); the same held-out items for every model (eval seed 0)
    "greedy": (1, 300),
    "pass4": (4, 100),
}


def eval_command(piece: Piece, model: str, which: str, output: Path, max_new_tokens: int,
                 limits: dict[str, int] | None = None) -> list[str]:
    samples, limit = EVALS[which]
    limit = (limits or {}).get(which, limit)
    cmd = [sys.executable, "-m", "thinktuning.cli", "eval", "--model", model, "--benchmarks", "arithmetic",
           "--levels", "1,2,3", "--limit", str(limit), "--samples", str(samples), "--max-new-tokens",
           str(max_new_tokens), "--answer-fallback", RULES[piece.rule], "--seed", "0", "--output", str(output),
           "--dtype", "float32"]  # pinned: eval's default precision follows the machine (models/precision.py)
    if samples > 1:
        cmd += ["--temperature", "1.0", "--top-p", "1.0"]
    return cmd


CODE: Path | None = None
"""With ``--code DIR`` (a git worktree of this repository), training and evaluation import the package from
``DIR/src``: a frozen snapshot, so editing the checkout while pieces run cannot change or break them."""

_print_lock = threading.Lock()
_git_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], log: Path) -> float:
    """Run one CLI command on one thread, its output appended to ``log``; stop the piece if it fails."""
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if CODE is not None:
        env["PYTHONPATH"] = str(CODE / "src")
    with log.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if code != 0:
        raise RuntimeError(f"exit {code}: {shlex.join(cmd)} (see {log})")
    return time.time() - t0


def gzip_copy(src: Path, dst: Path) -> None:
    with src.open("rb") as fi, gzip.open(dst, "wb", compresslevel=9) as fo:
        shutil.copyfileobj(fi, fo)


def commit(paths: list[Path], message: str) -> None:
    """Commit only ``paths`` (other staged work stays staged), retrying while another git command holds the lock."""
    rel = [str(p.relative_to(ROOT)) for p in paths]
    with _git_lock:
        for attempt in range(30):
            add = subprocess.run(["git", "add", "--", *rel], cwd=ROOT, capture_output=True, text=True)
            done = add.returncode == 0 and subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, capture_output=True, text=True,
            ).returncode == 0
            if done:
                return
            time.sleep(2 + attempt)
        say(f"could not commit {rel}: commit them by hand")


def machine() -> dict:
    import platform

    import torch

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE or ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": head, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "threads_per_piece": 1}


def run_piece(piece: Piece, args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    results = piece.results(Path(args.results))
    run_dir = piece.run_dir(out)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = out / f"{piece.rule}-{piece.arm}-seed{piece.seed}.log"
    info = {"piece": piece.name, "arm": piece.arm, "label": ARMS[piece.arm][2], "rule": piece.rule,
            "answer_fallback": RULES[piece.rule], "seed": piece.seed, "steps": 0 if piece.arm == "zero-shot"
            else args.steps, "pinned": PINNED, "arm_settings": ARMS[piece.arm][1], **machine(), "wall_s": {}}
    say(f"start {piece.name} (commit {info['commit'][:7]}, {info['cpu_capability']})")
    if piece.arm == "zero-shot":
        model = "smollm2-135m-instruct"
    else:
        resume = (run_dir / "config.yaml").is_file()
        info["wall_s"]["train"] = run(train_command(piece, run_dir, args.steps, resume), log)
        model = str(run_dir)
        say(f"trained {piece.name} in {info['wall_s']['train'] / 60:.0f} min")
    results.mkdir(parents=True, exist_ok=True)
    limits = {"greedy": args.greedy_limit, "pass4": args.pass_limit}
    for which in EVALS:
        target = run_dir.parent / f"seed{piece.seed}-eval-{which}.json"
        info["wall_s"][f"eval_{which}"] = run(
            eval_command(piece, model, which, target, args.max_new_tokens, limits), log)
        gzip_copy(target, results / f"eval-{which}.json.gz")
    if piece.arm != "zero-shot":
        for name in ("metrics.jsonl", "config.yaml", "run.json"):
            shutil.copy(run_dir / name, results / name)
        gzip_copy(run_dir / "rollouts.jsonl", results / "rollouts.jsonl.gz")
    (results / "piece.json").write_text(json.dumps(info, indent=1) + "\n")
    say(f"done {piece.name}: " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in info["wall_s"].items()))
    if not args.no_commit:
        commit([results], f"evidence: {piece.name} ({info['label']}; {info['steps']} steps)")
        if piece.arm != "zero-shot" and not args.keep_runs:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 1.6 GB each; the results are committed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", default=None, help="RULE/ARM/SEED,... (default: the budget order, see budget_order)")
    ap.add_argument("--workers", type=int, default=2, help="pieces side by side, one thread each")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="evaluation's response budget")
    ap.add_argument("--greedy-limit", type=int, default=EVALS["greedy"][1])
    ap.add_argument("--pass-limit", type=int, default=EVALS["pass4"][1])
    ap.add_argument("--out", default=str(ROOT / "runs" / "evidence"), help="run folders and logs (not committed)")
    ap.add_argument("--results", default=str(RESULTS), help="where finished pieces are written (committed)")
    ap.add_argument("--no-commit", action="store_true", help="write results but do not git-commit them")
    ap.add_argument("--keep-runs", action="store_true", help="keep checkpoints after a piece is committed")
    ap.add_argument("--code", default=None, metavar="DIR",
                    help="run the package from this git worktree's src/ (a frozen snapshot of the code)")
    ap.add_argument("--list", action="store_true", help="print each piece of the plan as done or left, and exit")
    args = ap.parse_args(argv)
    global CODE
    CODE = Path(args.code).resolve() if args.code else None
    pieces = [Piece.parse(p) for p in (args.pieces.split(",") if args.pieces else budget_order())]
    left = [p for p in pieces if not p.done(Path(args.results))]
    if args.list:
        for p in pieces:
            print(("done  " if p.done(Path(args.results)) else "left  ") + p.name)
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    say(f"{len(pieces) - len(left)} of {len(pieces)} pieces done; {len(left)} to run, {args.workers} at a time")
    failed = []

    def work(p: Piece) -> None:
        try:
            run_piece(p, args)
        except Exception as err:  # one failed piece must not stop the others
            failed.append(p.name)
            say(f"FAILED {p.name}: {err}")

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(work, left))
    say(f"finished; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
