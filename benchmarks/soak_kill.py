"""Soak test, as a figure: SIGKILL a real training run at N random moments, ``--resume`` it each time, and check that
nothing is lost (the claim of docs/errors.md, "SIGKILL, OOM kill, power cut", measured over many kills instead of the
one of ``tests/integration/test_resume.py``). Not a test and not in CI: it takes minutes.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak_kill.py [--kills 20] [--steps 12] [--seed 0]
        [--out FILE.json] [--work-dir DIR] [--keep]

What runs: ``python -m thinktuning.cli train --config cpu-scripted`` in a subprocess (its own session, one torch
thread), on the tiny random 2-layer Llama of ``tests/train/test_trainer.py`` (SmolLM2's tokenizer), with the scripted
teacher guiding a quarter of each group at every step, ``save_every=1`` and ``keep_last=2``: every step samples,
asks the teacher, updates and writes (and prunes) a checkpoint.

1. One uninterrupted run gives the reference results and the timeline: its wall time T, when each step ended and
   how long a checkpoint's temporary folder lives.
2. Killed runs: each attempt is killed with SIGKILL (the whole process group, the answer checker's worker too),
   then the checkpoints are checked and the run is resumed with ``--resume``. A kill is either *timed* (after a
   delay drawn uniformly in [0, T), seeded by ``--seed``) or *at a checkpoint* (about a quarter of them: when the
   1st-3rd new ``checkpoints/.tmp-*`` folder of the attempt appears, polled every 2 ms, plus up to 80% of a
   checkpoint's measured write time). A resumed attempt has less left to do than T, so a delay can outlast it: the
   attempt then finishes, and that run ("round") is compared with the uninterrupted one; the next kill starts a new
   round in a fresh folder. A run whose last checkpoint exists is resumed without a kill (its resume only says
   "nothing to do"), and after the N-th kill the current round is resumed until it finishes. So every kill lands on
   the same timeline (startup, any step, any phase) and every round ends in a comparison.
3. After every kill, every ``checkpoints/step-*`` folder (whatever its name says, so also any that
   ``latest_checkpoint`` could pick) must load: ``model.safetensors`` opens with safetensors and every tensor reads,
   ``trainer_state.json`` parses and names its step, and optimizer, scheduler and RNG state load through
   ``thinktuning.run.checkpoint.load_training_state``. ``.tmp-*`` folders (a write or a prune cut short) are only
   listed: the next save removes them.
4. At the end of each round: ``metrics.jsonl`` (without ``time/*`` and ``reward/checker_timeouts``, counters of the
   process), ``rollouts.jsonl`` and the last checkpoint's ``model.safetensors`` (tensor by tensor) must equal the
   uninterrupted run's.

Where each kill landed: a moment before the SIGKILL, the run gets SIGUSR1, on which ``faulthandler`` (registered by
a four-line launcher that then runs ``thinktuning.cli`` as ``__main__``, as ``-m`` does) writes the Python stack of
every thread; the main thread's stack names the phase: startup (imports, model load, resume), sampling, teacher,
rewards, update, logging (metrics and rollouts lines), checkpoint (with the part being written: model, tokenizer,
states, trainer_state, rename, prune), shutdown. ``--no-probe`` runs the plain ``python -m thinktuning.cli`` and
labels kills by the run folder's files only (a ``.tmp-*`` folder present: checkpoint; no new metrics line: startup;
else step). The uninterrupted run is always the plain CLI, so equal results also show that the probe changes
nothing.

Output: a table with one row per kill, the per-phase counts, and the last line ``N of N kills resumed;
metrics/rollouts/weights identical: yes|no; corrupt checkpoints: K``; the details as JSON in ``--out``. Exit code 0
when every kill was resumed, every round is identical and no checkpoint was corrupt, else 1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=16", "data.levels=1",
    "data.limit=16", "teacher.max_reason_tokens=6", "teacher.max_phrase_tokens=6", "optim.lr=1e-3",
    "optim.micro_batch_size=4", "save_every=1", "keep_last=2",
    # a quarter of each group guided at every step: the teacher, the splice and non-zero advantages in every step
    "guidance.schedule=constant", "guidance.p_start=0.25", "guidance.cutoff_epsilon=null",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
NOT_COMPARED = ("time/", "reward/checker_timeouts", "teacher/cache_")  # wall-clock times; counters of the process
PROBE = (  # python -c PROBE DUMPFILE train ...: the CLI as `python -m thinktuning.cli`, plus a stack dump on SIGUSR1
    "import faulthandler, runpy, signal, sys\n"
    "dump = open(sys.argv.pop(1), 'w')\n"
    "faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)\n"
    "runpy.run_module('thinktuning.cli', run_name='__main__', alter_sys=True)\n"
)
FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')
CALLEE_PHASE = {"_rollouts": "sampling", "_score_own": "rewards", "_guide": "teacher", "_continue": "teacher",
                "_reward_and_advantage": "rewards", "push_weights": "update", "_log": "logging"}


# ----------------------------------------------------------------------------------------- the runs


def build_student(folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.train.test_trainer import _tiny_student
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    folder.mkdir(parents=True, exist_ok=True)
    return _tiny_student(folder, load_tokenizer(resolve("smollm2-135m-instruct")))


def train_argv(run: Path, student: str, steps: int, resume: bool, dump: Path | None) -> list[str]:
    head = [sys.executable, "-m", "thinktuning.cli"] if dump is None else [sys.executable, "-c", PROBE, str(dump)]
    argv = [*head, "train", "--config", "cpu-scripted", "--output-dir", str(run), "--max-steps", str(steps),
            "--set", f"model.student={student}"]
    for item in SETS:
        argv += ["--set", item]
    return [*argv, "--resume"] if resume else argv


class Watch:
    """What a run folder shows, polled: complete metrics lines, and the temporary checkpoint folders seen."""

    def __init__(self, run: Path) -> None:
        self.run, self.size, self.lines = run, -1, 0
        self.tmp_seen: dict[str, list[float]] = {}  # name -> [first seen, last seen] (seconds from the start)
        self.line_times: list[float] = []

    def poll(self, now: float) -> None:
        metrics = self.run / "metrics.jsonl"
        try:
            size = metrics.stat().st_size
        except OSError:
            size = 0
        if size != self.size:
            self.size = size
            lines = metrics.read_bytes().count(b"\n") if size else 0
            self.line_times += [now] * max(0, lines - self.lines)
            self.lines = lines
        try:
            names = [p for p in os.listdir(self.run / "checkpoints") if p.startswith(".tmp-")]
        except OSError:
            names = []
        for name in names:
            self.tmp_seen.setdefault(name, [now, now])[1] = now


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
        # its own session: SIGKILL reaches the whole group (the answer checker's worker too), as a power cut would
        return subprocess.Popen(argv, env=ENV, stdout=out, stderr=err, cwd=ROOT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def probe_and_kill(proc: subprocess.Popen, dump: Path | None) -> str:
    """SIGUSR1 (faulthandler writes the stacks), wait for the dump, then SIGKILL the group. Returns the dump."""
    text = ""
    if dump is not None and proc.poll() is None:
        before = dump.stat().st_size if dump.is_file() else 0
        os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            size = dump.stat().st_size if dump.is_file() else 0
            if size > before:
                time.sleep(0.002)  # the dump is written frame by frame: let it finish
                text = dump.read_text(errors="replace")[before:]
                break
            time.sleep(0.0005)
    kill_group(proc)
    return text


def phase_of(dump: str) -> tuple[str, str, str]:
    """(phase, part of a checkpoint write, innermost frame) from a faulthandler dump of the main thread."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump)
    # faulthandler writes at most 100 frames ("..." after them): a deep import loses the launcher's frame
    main = next((b for b in blocks if 'File "<string>"' in b or b.rstrip().endswith("...")), "")
    frames = [(Path(f).name, int(line), fn, f) for f, line, fn in FRAME.findall(main)][::-1]  # outermost first
    if not frames:
        return "unknown", "", ""
    inner = f"{frames[-1][0]}:{frames[-1][1]} {frames[-1][2]}"
    ours = [(name, fn, full) for name, _, fn, full in frames if "/thinktuning/" in full]
    funcs = [(name, fn) for name, fn, _ in ours]
    if ("trainer.py", "step") in funcs:
        after = ours[funcs.index(("trainer.py", "step")) + 1:]
        for name, fn, _ in after:
            if name == "update.py":
                return "update", "", inner
            if fn in CALLEE_PHASE:
                return CALLEE_PHASE[fn], "", inner
        return "step (other)", "", inner
    if any(fn in ("save", "save_checkpoint") for _, fn in funcs):
        where = [(full, line) for name, line, fn, full in frames if name == "checkpoint.py"]
        return "checkpoint", _checkpoint_part(*where[-1]) if where else "save", inner
    if ("trainer.py", "close") in funcs:
        return "shutdown", "", inner
    if ("trainer.py", "_train_loop") in funcs:  # in the loop, outside a step and a save: metrics and progress
        return "logging", "", inner
    return "startup", "", inner


CHECKPOINT_PARTS = {"model.save_pretrained": "model", "tokenizer.save_pretrained": "tokenizer", ".pt\"": "states",
                    "trainer_state.json": "trainer_state", "os.replace(tmp": "rename", "doomed": "prune",
                    "remove_partial": "cleanup", "non_finite": "nan check", "rmtree(final)": "replace"}


def _checkpoint_part(path: str, line: int) -> str:
    """Which part of save_checkpoint a line of checkpoint.py is: model, tokenizer, states, rename, prune..."""
    import linecache

    text = linecache.getline(path, line)
    return next((part for key, part in CHECKPOINT_PARTS.items() if key in text), text.strip()[:40] or "?")


def phase_from_files(watch: Watch, steps_before: int) -> str:
    """The coarse label without a stack: a checkpoint being written, or how far the attempt got."""
    tmp = [n for n in _listdir(watch.run / "checkpoints") if n.startswith(".tmp-")]
    if tmp:
        return "checkpoint"
    return "startup" if watch.lines <= steps_before else "step"


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


# ----------------------------------------------------------------------------------------- the checks


def check_checkpoints(run: Path) -> dict[str, Any]:
    """Every ``step-*`` folder must load; ``.tmp-*`` leftovers are listed."""
    from thinktuning.run import checkpoint as ckpt

    names = _listdir(run / "checkpoints")
    latest = ckpt.latest_checkpoint(run)
    folders = [n for n in names if not n.startswith(".tmp-")]
    results = {n: checkpoint_error(run / "checkpoints" / n) for n in folders}
    return {"folders": folders, "leftovers": [n for n in names if n.startswith(".tmp-")],
            "latest": latest.name if latest else None,
            "corrupt": {n: e for n, e in results.items() if e is not None}}


def checkpoint_error(path: Path) -> str | None:
    """None when the checkpoint loads as a resume loads it, else why not."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from thinktuning.run import checkpoint as ckpt

    try:
        if not re.fullmatch(r"step-\d+", path.name):
            return "a folder of checkpoints/ that is neither step-N nor .tmp-*"
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
        tensors = load_file(str(path / "model.safetensors"))
        if sorted(tensors) != sorted(keys):
            return "model.safetensors: tensors do not match its header"
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("step") != int(path.name.split("-")[1]):
            return f"trainer_state.json says step {state.get('step')}"
        json.loads((path / "config.json").read_text())
        # the trainer's optimizer is AdamW over every parameter (no LoRA), in one group: as many as the tensors
        params = [torch.nn.Parameter(t) for t in tensors.values()]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        rng = torch.get_rng_state()
        try:
            ckpt.load_training_state(path, optimizer, scheduler)
        finally:
            torch.set_rng_state(rng)
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[:300]}"
    return None


def read_jsonl(path: Path) -> list[dict]:
    from thinktuning.jsonl import read_jsonl as read

    return read(path) if path.is_file() else []


def compare(run: Path, straight: Path, steps: int) -> dict[str, Any]:
    """Metrics, rollouts and the last checkpoint's weights against the uninterrupted run."""
    from safetensors.torch import load_file

    def comparable(folder: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if not k.startswith(NOT_COMPARED)}
                for m in read_jsonl(folder / "metrics.jsonl")]

    mine, ref = comparable(run), comparable(straight)
    logged = [m.get("step") for m in mine]
    metric_diffs = sorted({f"step {a.get('step')}: {k}" for a, b in zip(mine, ref, strict=False)
                           for k in set(a) | set(b) if a.get(k) != b.get(k)})
    metrics_same = mine == ref and logged == list(range(1, steps + 1))
    rollouts_same = read_jsonl(run / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl")
    last = f"checkpoints/step-{steps:06d}/model.safetensors"
    weight_diffs = []
    try:
        a, b = load_file(str(run / last)), load_file(str(straight / last))
        weight_diffs = sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not _equal(a[k], b[k])]
    except Exception as err:
        weight_diffs = [f"{type(err).__name__}: {err}"]
    return {"identical": metrics_same and rollouts_same and not weight_diffs, "metrics": metrics_same,
            "rollouts": rollouts_same, "weights": not weight_diffs, "logged_steps": logged,
            "metric_diffs": metric_diffs[:20], "weight_diffs": weight_diffs[:20],
            "leftovers": [n for n in _listdir(run / "checkpoints") if n.startswith(".tmp-")]}


def _equal(x, y) -> bool:
    import torch

    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


# ----------------------------------------------------------------------------------------- the soak


def straight_run(work: Path, student: str, steps: int, poll_s: float) -> dict[str, Any]:
    run, logs = work / "straight", work / "logs"
    t0 = time.monotonic()
    proc = start(train_argv(run, student, steps, resume=False, dump=None), logs / "straight")
    watch = Watch(run)
    while proc.poll() is None:
        watch.poll(time.monotonic() - t0)
        time.sleep(poll_s)
    wall = time.monotonic() - t0
    watch.poll(wall)
    if proc.returncode != 0:
        sys.exit(f"the uninterrupted run failed (rc {proc.returncode}):\n{(logs / 'straight.err').read_text()[-3000:]}")
    writes = [last - first for name, (first, last) in watch.tmp_seen.items() if name.startswith(".tmp-step-")]
    bad = {p.name: checkpoint_error(p) for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")}
    if any(bad.values()):
        sys.exit(f"the checker rejects the uninterrupted run's own checkpoints (the checker is wrong): {bad}")
    gaps = [b - a for a, b in zip(watch.line_times, watch.line_times[1:], strict=False)]
    return {"wall_s": wall, "first_step_s": watch.line_times[0] if watch.line_times else None,
            "step_s": statistics.median(gaps) if gaps else None, "step_ends_s": watch.line_times,
            "checkpoint_write_s": max(statistics.median(writes), poll_s) if writes else 0.05,
            "tmp_folders_seen": len(watch.tmp_seen)}


def attempt(run: Path, student: str, steps: int, resume: bool, log: Path, plan: dict | None, probe: bool,
            poll_s: float, limit_s: float) -> dict[str, Any]:
    """One process: until it ends, or until the plan's moment, when it is killed."""
    dump = log.with_suffix(".stack") if probe else None
    steps_before = len(read_jsonl(run / "metrics.jsonl")) if resume else 0
    t0 = time.monotonic()
    proc = start(train_argv(run, student, steps, resume, dump), log)
    watch = Watch(run)
    watch.poll(0.0)
    known_tmp = set(watch.tmp_seen)
    seen_at: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic() - t0
            watch.poll(now)
            if now > limit_s:
                kill_group(proc)
                return {"outcome": "hung", "elapsed_s": now}
            if plan is not None:
                if plan["kind"] == "timed":
                    due = now >= plan["delay_s"]
                else:
                    new = [n for n in watch.tmp_seen if n not in known_tmp and n.startswith(".tmp-step-")]
                    if seen_at is None and len(new) >= plan["nth_tmp"]:
                        seen_at = now
                    due = seen_at is not None and now >= seen_at + plan["extra_s"]
                if due:
                    file_phase = phase_from_files(watch, steps_before)
                    stack = probe_and_kill(proc, dump)
                    phase, part, inner = phase_of(stack) if probe else (file_phase, "", "")
                    if phase == "startup" and watch.lines >= steps:
                        phase = "shutdown"  # outside the trainer with every step logged: after the loop
                    return {"outcome": "killed", "elapsed_s": now, "phase": phase, "part": part, "frame": inner,
                            "file_phase": file_phase, "tmp_at_kill": [n for n in _listdir(run / "checkpoints")
                                                                      if n.startswith(".tmp-")]}
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    err = log.with_suffix(".err").read_text(errors="replace")
    return {"outcome": "finished" if proc.returncode == 0 else "failed", "rc": proc.returncode,
            "elapsed_s": time.monotonic() - t0, "stderr_tail": "" if proc.returncode == 0 else err[-2000:]}


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (work / "logs").mkdir(parents=True, exist_ok=True)
    poll_s = args.poll_ms / 1000
    started = time.monotonic()
    print(f"work folder: {work}", flush=True)
    student = build_student(work / "tiny-student")
    ref = straight_run(work, student, args.steps, poll_s)
    print(f"uninterrupted run: {args.steps} steps in {ref['wall_s']:.1f} s (first step ends at "
          f"{ref['first_step_s']:.1f} s, then {ref['step_s']:.2f} s a step; a checkpoint's .tmp folder lives "
          f"~{ref['checkpoint_write_s'] * 1000:.0f} ms)", flush=True)
    rng = random.Random(args.seed)
    at_checkpoint = set(rng.sample(range(args.kills), round(args.kills * args.checkpoint_share)))
    kills: list[dict] = []
    rounds: list[dict] = []
    limit_s = max(120.0, 10 * ref["wall_s"])
    round_no, attempt_no, resume = 0, 0, False
    run = None
    while True:
        if run is None:
            round_no, attempt_no, resume = round_no + 1, 0, False
            run = work / f"round-{round_no:02d}"
            rounds.append({"round": round_no, "attempts": 0, "kills": 0})
        attempt_no += 1
        rounds[-1]["attempts"] = attempt_no
        plan = None
        finished = (run / "checkpoints" / f"step-{args.steps:06d}" / "trainer_state.json").is_file()
        if len(kills) < args.kills and not finished:  # a finished run's resume only says "nothing to do": not cut
            if len(kills) in at_checkpoint:
                plan = {"kind": "checkpoint", "nth_tmp": rng.randint(1, 3),
                        "extra_s": rng.uniform(0, 0.8 * ref["checkpoint_write_s"])}
            else:
                plan = {"kind": "timed", "delay_s": rng.uniform(0, ref["wall_s"])}
        log = work / "logs" / f"round-{round_no:02d}-attempt-{attempt_no:02d}"
        res = attempt(run, student, args.steps, resume, log, plan, args.probe, poll_s, limit_s)
        if kills and kills[-1]["round"] == round_no and kills[-1]["resumed"] is None:
            kills[-1]["resumed"] = res["outcome"] in ("killed", "finished")
        if res["outcome"] == "killed":
            check = check_checkpoints(run)
            logged = len(read_jsonl(run / "metrics.jsonl"))
            kill = {"kill": len(kills) + 1, "round": round_no, "attempt": attempt_no, **plan,
                    "at_s": res["elapsed_s"], "phase": res["phase"], "part": res["part"], "frame": res["frame"],
                    "file_phase": res["file_phase"], "tmp_at_kill": res["tmp_at_kill"], "steps_logged": logged,
                    "latest": check["latest"], "checkpoints": check["folders"], "leftovers": check["leftovers"],
                    "corrupt": check["corrupt"], "resumed": None}
            kills.append(kill)
            rounds[-1]["kills"] += 1
            print(row(kill), flush=True)
            resume = True
            continue
        # the attempt ended by itself: the round is over
        rounds[-1]["outcome"] = res["outcome"]
        if res["outcome"] == "finished":
            rounds[-1].update(compare(run, work / "straight", args.steps))
        else:
            rounds[-1].update({"identical": False, "rc": res.get("rc"), "stderr_tail": res.get("stderr_tail")})
        r = rounds[-1]
        print(f"  round {round_no} {res['outcome']} after {r['kills']} kill(s): identical "
              f"{'yes' if r['identical'] else 'no'}" + ("" if r["identical"] else f" {_why(r)}"), flush=True)
        run = None
        if len(kills) >= args.kills:
            break
    corrupt = {(k["round"], name) for k in kills for name in k["corrupt"]}
    resumed = sum(1 for k in kills if k["resumed"])
    compared = [r for r in rounds if r["kills"]]
    identical = bool(compared) and all(r["identical"] for r in compared)
    phases = collections.Counter(k["phase"] for k in kills)
    summary = (f"{resumed} of {len(kills)} kills resumed; metrics/rollouts/weights identical: "
               f"{'yes' if identical else 'no'}; corrupt checkpoints: {len(corrupt)}")
    return {"args": vars(args), "sets": SETS, "uninterrupted": ref, "kills": kills, "rounds": rounds,
            "phases": dict(phases), "resumed": resumed, "identical": identical, "corrupt_checkpoints": len(corrupt),
            "elapsed_s": time.monotonic() - started, "summary": summary}


def _why(r: dict) -> str:
    if r.get("outcome") != "finished":
        return f"(the resumed run failed, rc {r.get('rc')}: {(r.get('stderr_tail') or '').strip()[-300:]})"
    bad = [name for name in ("metrics", "rollouts", "weights") if not r[name]]
    return f"({', '.join(bad)} differ: {(r['metric_diffs'] + r['weight_diffs'])[:5]})"


HEADER = (f"{'kill':>4} {'round':>5} {'kind':<10} {'moment':>14} {'phase':<10} {'part':<13} {'steps':>5} "
          f"{'latest ckpt':<11} {'intact':>6} leftovers")


def row(k: dict) -> str:
    """One kill: when (delay from the attempt's start, or which .tmp folder), where, how far, and the checkpoints."""
    moment = (f"{k['delay_s']:.2f} s" if k["kind"] == "timed"
              else f"tmp #{k['nth_tmp']} +{k['extra_s'] * 1000:.0f}ms")
    intact = f"{len(k['checkpoints']) - len(k['corrupt'])}/{len(k['checkpoints'])}"
    return (f"{k['kill']:>4} {k['round']:>5} {k['kind']:<10} {moment:>14} {k['phase']:<10} {k['part'] or '':<13} "
            f"{k['steps_logged']:>5} {k['latest'] or '-':<11} {intact:>6} {','.join(k['leftovers']) or '-'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (default 20)")
    ap.add_argument("--steps", type=int, default=12, help="steps of each run (default 12)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (the runs' own seed is fixed)")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "soak_kill.json"),
                    help="the details as JSON (default: %(default)s)")
    ap.add_argument("--checkpoint-share", type=float, default=0.25,
                    help="share of the kills made while a checkpoint is being written (default 0.25)")
    ap.add_argument("--poll-ms", type=float, default=2.0, help="how often the run folder is polled (default 2)")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="plain `python -m thinktuning.cli`, phases from the run folder's files only")
    ap.add_argument("--work-dir", help="keep the runs here (default: a temporary folder, deleted unless --keep "
                                       "or something failed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args()
    if args.kills < 1 or args.steps < 2:
        ap.error("--kills must be >= 1 and --steps >= 2")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="thinktuning-soak-"))
    result = soak(args, work)
    print()
    print(HEADER)
    for k in result["kills"]:
        print(row(k))
    print("kills per phase: " + ", ".join(f"{p} {n}" for p, n in sorted(result["phases"].items())))
    print(f"rounds: {len(result['rounds'])} ({sum(r['identical'] for r in result['rounds'])} identical); "
          f"took {result['elapsed_s'] / 60:.1f} min")
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"details: {args.out}")
    ok = result["resumed"] == len(result["kills"]) and result["identical"] and not result["corrupt_checkpoints"]
    if not args.work_dir and not args.keep and ok:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.work_dir:
        print(f"runs kept in {work}")
    print(result["summary"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
