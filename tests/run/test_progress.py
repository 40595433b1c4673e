"""The progress display: plain lines off a terminal, one redrawn line on a terminal, start/end only when quiet."""

from __future__ import annotations

import io

from thinktuning.run.folder import progress_line
from thinktuning.run.progress import Progress


class Clock:
    """A clock that advances 10 s per step (the test calls ``tick``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 10.0) -> None:
        self.now += seconds


def metrics(step: int) -> dict:
    return {
        "step": step, "reward/mean": 0.25 * step, "accuracy": 0.125, "guidance/guided": 2,
        "guidance/no_feedback": 1, "loss": -0.01, "grad_norm": 0.5, "time/step": 10.0,
    }


def run(progress: Progress, clock: Clock, steps: range) -> None:
    progress.start(steps.start - 1, "runs/x")
    for step in steps:
        clock.tick()
        progress.update(metrics(step))
    progress.finish()


def test_plain_lines_when_not_a_terminal():
    out, clock = io.StringIO(), Clock()
    run(Progress(3, stream=out, clock=clock), clock, range(1, 4))
    lines = out.getvalue().splitlines()
    assert lines[0] == "training steps 1..3 of 3 -> runs/x"
    # the same line run.folder.progress_line writes, with the ETA from the mean step time so far
    assert lines[1:4] == [progress_line(metrics(1), 3, 20.0), progress_line(metrics(2), 3, 10.0),
                          progress_line(metrics(3), 3, 0.0)]
    assert lines[4].startswith("finished step 3/3: 3 steps in 30s | last reward 0.750")
    assert "\r" not in out.getvalue()


def test_one_redrawn_line_on_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out, clock = io.StringIO(), Clock()
    run(Progress(4, stream=out, tty=True, clock=clock), clock, range(1, 5))
    text = out.getvalue()
    start, live, end = text.split("\n", 1)[0], text.split("\n", 1)[1].rsplit("\n", 2)[0], text.rsplit("\n", 2)[1]
    assert start.startswith("training steps 1..4")
    assert live.count("\r") == 4 and "\n" not in live  # each step overwrites the last
    assert "[##........] step 1/4" in live and "[##########] step 4/4" in live
    assert "guided 2 (no feedback 1)" in live and "10.0s/step" in live and "eta 30s" in live
    assert end.startswith("finished step 4/4")


def test_terminal_line_fits_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    p = Progress(4, stream=out, tty=True)
    p.update(metrics(1))
    assert len(out.getvalue().split("\n")[-1].strip("\r").replace("\x1b[K", "")) == 39


def test_quiet_prints_only_first_and_last_line():
    out, clock = io.StringIO(), Clock()
    run(Progress(3, quiet=True, stream=out, clock=clock), clock, range(1, 4))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("training steps") and lines[1].startswith("finished step 3/3")


def test_resumed_run_counts_only_the_steps_left():
    out, clock = io.StringIO(), Clock()
    p = Progress(10, stream=out, clock=clock)
    p.start(6)
    clock.tick(60)
    p.update(metrics(7))
    assert p.eta() == 180  # 3 steps left at 60 s each
    assert "resuming after step 6" in out.getvalue()
    assert "eta 3.0min" in out.getvalue()


def test_finish_without_a_step_and_nan_metrics():
    out, clock = io.StringIO(), Clock()
    p = Progress(2, stream=out, tty=True, clock=clock)
    p.start(0)
    p.finish()
    assert "stopped before finishing a step" in out.getvalue()
    p.start(0)
    p.update({**metrics(1), "reward/mean": float("nan"), "accuracy": None})
    assert "reward n/a | acc n/a" in out.getvalue()
