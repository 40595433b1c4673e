"""Never lose a run: SIGKILL at any moment, then ``--resume``, gives exactly the uninterrupted run; SIGTERM and
SIGINT stop after the current step with a checkpoint and a resume command that works.

The runs are real ``python -m thinktuning.cli train`` processes on the tiny random student of test_trainer.py (real
tokenizer, chat template, teacher, splice, loss, checkpoints), one torch thread each, so they are fast and their
floating-point results do not depend on how busy the machine is.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.train.test_trainer import _tiny_student
from thinktuning.cli import main
from thinktuning.jsonl import read_jsonl
from thinktuning.train.interrupt import StopRequest

STEPS = 4
TINY = [
    "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=16", "data.levels=1", "data.limit=16",
    "teacher.max_reason_tokens=6", "teacher.max_phrase_tokens=6", "optim.lr=1e-3", "optim.micro_batch_size=4",
    # half of each group guided at every step: guided and unguided rollouts, non-zero advantages throughout
    "guidance.schedule=constant", "guidance.p_start=0.5", "guidance.cutoff_epsilon=null",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CLI = [sys.executable, "-m", "thinktuning.cli"]
# counters of the process (not of the run) and wall-clock times differ between a resumed and a straight run
NOT_COMPARED = ("time/", "reward/checker_timeouts", "reward/unparsed_references", "teacher/cache_", "teacher/ms",
                "teacher/tokens_", "teacher/cost")  # the teacher's time, and tokens of the answers it was asked for


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    return _tiny_student(tmp_path_factory.mktemp("tiny-student"), load_tokenizer(resolve("smollm2-135m-instruct")))


def train_argv(run: Path, student: str, steps: int = STEPS, sets=(), *extra: str) -> list[str]:
    argv = [*CLI, "train", "--output-dir", str(run), "--max-steps", str(steps), "--set", f"model.student={student}"]
    # float32 pinned: the runs are subprocesses (the real CPU's precision) and the resumes run in this process, where
    # tests resolve model.dtype=auto as float32 (conftest); a resume must compute as its run did to match it
    for item in (*TINY, "save_every=1", "model.dtype=float32", *sets):
        argv += ["--set", item]
    return [*argv, *extra]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the moment to interrupt it:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.005)


def comparable(run: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(NOT_COMPARED)} for m in read_jsonl(run / "metrics.jsonl")]


def check_same_as(run: Path, straight: Path, steps: int = STEPS) -> None:
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(1, steps + 1)), "each step once"
    assert comparable(run) == comparable(straight)
    assert read_jsonl(run / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl")
    left = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert left == [], f"temporary folders left behind: {left}"


@pytest.fixture(scope="module")
def runs(tiny_student, tmp_path_factory):
    """Three runs of the same config at once: straight through, SIGKILLed once its step-2 checkpoint exists, and
    SIGTERMed after its first step (saving only at the end, so its checkpoint can only come from the stop). Then
    both interrupted runs are resumed, the SIGTERMed one with the command it printed, run as printed."""
    root = tmp_path_factory.mktemp("runs")
    straight, killed, termed = root / "straight", root / "killed", root / "termed"
    started = time.monotonic()
    procs = {
        "straight": start(train_argv(straight, tiny_student)),
        "killed": start(train_argv(killed, tiny_student)),
        "termed": start(train_argv(termed, tiny_student, STEPS, ["save_every=0"])),
    }
    try:
        second = killed / "checkpoints" / "step-000002" / "trainer_state.json"
        signals = {
            "killed": (signal.SIGKILL, second.is_file),
            "termed": (signal.SIGTERM, lambda: logged_lines(termed) >= 1),
        }
        deadline = time.monotonic() + 180
        while signals:
            for name, (sig, ready) in list(signals.items()):
                if procs[name].poll() is not None:
                    pytest.fail(f"run {name} ended (rc {procs[name].returncode}) before it could be interrupted:\n"
                                f"{procs[name].communicate()[1][-3000:]}")
                if ready():
                    procs[name].send_signal(sig)
                    del signals[name]
            assert time.monotonic() < deadline, "timed out waiting for the runs"
            time.sleep(0.005)
        out = {f"{name} result": finish(proc) for name, proc in procs.items()}
        out["phase 1 s"] = time.monotonic() - started
        out["killed_at"] = logged_lines(killed)
        stopped = [line for line in out["termed result"][1].splitlines() if line.startswith("stopped at step ")]
        out["stopped"] = stopped
        command = shlex.split(stopped[0].split("resume with: ", 1)[1]) if len(stopped) == 1 else None
        out["command"] = command
        out["termed_checkpoints"] = sorted(p.name for p in (termed / "checkpoints").iterdir())
        out["termed_steps"] = [m["step"] for m in read_jsonl(termed / "metrics.jsonl")]
        # resumed in this process, through the command line's own entry point (one torch thread, as the others)
        out["killed resumed"] = run_cli(train_argv(killed, tiny_student, STEPS, (), "--resume")[len(CLI):])
        if command and command[:2] == ["thinktuning", "train"]:
            out["termed resumed"] = run_cli(command[1:])
        out["total s"] = time.monotonic() - started
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield {"straight": straight, "killed": killed, "termed": termed, **out}


def run_cli(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def logged_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def test_sigkill_then_resume_equals_the_uninterrupted_run(runs):
    assert runs["straight result"][0] == 0, runs["straight result"][2][-3000:]
    assert runs["killed result"][0] == -signal.SIGKILL, "the run finished before it could be killed"
    assert runs["killed_at"] < STEPS
    assert runs["killed resumed"] == 0
    run = runs["killed"]
    resumed_from = json.loads((run / "run.json").read_text())["resumed_from"]
    assert resumed_from is not None and Path(resumed_from).name >= "step-000002"
    check_same_as(run, runs["straight"])
    print(f"killed after {runs['killed_at']} logged steps; resumed from {Path(resumed_from).name}; "
          f"runs took {runs['phase 1 s']:.0f} s + {runs['total s'] - runs['phase 1 s']:.0f} s (resumes)")


def test_sigterm_stops_after_the_step_saves_and_prints_a_working_resume_command(runs):
    rc, out, err = runs["termed result"]
    assert rc == 143, err[-3000:]
    assert "SIGTERM received: finishing the current step" in err
    assert len(runs["stopped"]) == 1, out
    step = int(runs["stopped"][0].split()[3].rstrip(";"))
    assert 1 <= step < STEPS
    assert runs["termed_steps"] == list(range(1, step + 1))
    assert runs["termed_checkpoints"] == [f"step-{step:06d}"]
    command = runs["command"]
    assert command[:2] == ["thinktuning", "train"] and command[-1] == "--resume"
    assert runs["termed resumed"] == 0
    check_same_as(runs["termed"], runs["straight"])


@pytest.mark.slow
def test_sigkill_then_resume_on_the_embedded_model(tmp_path):
    """The same guarantee on the real SmolLM2-135M (plain GRPO, tiny sizes: about a minute on 2 cores)."""
    sets = ["rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16", "guidance.enabled=false",
            "save_every=1", "data.levels=1", "optim.micro_batch_size=2"]

    def argv(run: Path, *extra: str) -> list[str]:
        out = [*CLI, "train", "--output-dir", str(run), "--max-steps", "3"]
        for item in sets:
            out += ["--set", item]
        return [*out, *extra]

    straight_run, run = tmp_path / "straight", tmp_path / "run"
    # 1.6 GB per checkpoint: the straight run saves only at the end, the killed one keeps only its latest
    twin = start(argv(straight_run, "--set", "save_every=0"))
    proc = start(argv(run, "--set", "keep_last=1"))
    wait_for(proc, lambda: (run / "checkpoints" / "step-000001" / "trainer_state.json").is_file(), timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    rc, _, err = finish(start(argv(run, "--resume", "--set", "keep_last=1")), timeout=400)
    assert rc == 0, err[-3000:]
    rc, _, err = finish(twin, timeout=400)
    assert rc == 0, err[-3000:]
    check_same_as(run, straight_run, steps=3)


# --- the signal handling itself, in this process ------------------------------------------------------------


def test_first_signal_sets_the_flag_second_aborts_and_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler at the next bytecode boundary of the main thread
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_sigint_exit_code_is_130():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert stop.requested and stop.exit_code == 130


def test_off_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with StopRequest() as stop:
            seen.append((signal.getsignal(signal.SIGTERM), stop.requested))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(before, False)]


def test_resume_command_keeps_every_argument():
    from thinktuning.cli import build_parser, resume_command

    args = build_parser().parse_args(
        ["train", "--config", "my config.yaml", "--max-steps", "5", "--seed", "3", "--set", "rollout.group_size=5",
         "--overwrite", "--quiet"]
    )
    command = resume_command(args, "runs/x y")
    assert shlex.split(command) == [
        "thinktuning", "train", "--config", "my config.yaml", "--output-dir", "runs/x y", "--max-steps", "5",
        "--seed", "3", "--set", "rollout.group_size=5", "--quiet", "--resume",
    ]
