"""Live progress of a training run on the terminal.

On a terminal, one line that redraws itself after every step (a bar, step, reward, accuracy, guided count, teacher
no-feedback count, step time, ETA). Not on a terminal (a log file, CI, ``| tee``), one plain line per step, the
same line ``run.folder.progress_line`` writes, so logs stay greppable. ``quiet`` prints only the first and last line.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

from thinktuning.run.folder import progress_line


def _minutes(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}min"


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


class Progress:
    """``start()`` once, ``update(metrics)`` after each step, ``finish()`` at the end (also after a failure)."""

    def __init__(self, total_steps: int, *, quiet: bool = False, stream: TextIO | None = None,
                 tty: bool | None = None, clock=time.perf_counter) -> None:
        self.total = total_steps
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.clock = clock
        self.started: float | None = None
        self.first_step = 0
        self.steps_done = 0
        self.last: dict[str, Any] | None = None
        self._open_line = False  # a redrawn line is on screen without its newline

    # ---------------------------------------------------------------------------------------- output

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _println(self, text: str) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False
        self._write(text + "\n")

    # ------------------------------------------------------------------------------------------- API

    def start(self, first_step: int, where: str = "", details: tuple[str, ...] = ()) -> None:
        """``first_step``: steps already done (0, or the resumed checkpoint's step); ``details``: lines printed under
        the first (e.g. the precision chosen and why), except when quiet (run.json has them)."""
        self.started = self.clock()
        self.first_step = first_step
        resumed = f" (resuming after step {first_step})" if first_step else ""
        self._println(f"training steps {first_step + 1}..{self.total} of {self.total}{resumed}"
                      + (f" -> {where}" if where else ""))
        for line in () if self.quiet else details:
            self._println(f"  {line}")

    def eta(self) -> float | None:
        """Seconds left, from the mean time of the steps run so far in this process."""
        if self.started is None or not self.steps_done:
            return None
        per_step = (self.clock() - self.started) / self.steps_done
        return per_step * max(self.total - self.first_step - self.steps_done, 0)

    def update(self, metrics: dict[str, Any]) -> None:
        if self.started is None:
            self.start(int(metrics["step"]) - 1)
        self.steps_done += 1
        self.last = metrics
        if self.quiet:
            return
        eta = self.eta()
        if not self.tty:
            self._println(progress_line(metrics, self.total, eta))
            return
        width = shutil.get_terminal_size((100, 20)).columns
        line = self.live_line(metrics, eta)
        self._write("\r" + line[: max(width - 1, 10)] + "\x1b[K")
        self._open_line = True

    def live_line(self, m: dict[str, Any], eta: float | None) -> str:
        step = int(m["step"])
        filled = round(10 * step / max(self.total, 1))
        bar = "#" * filled + "." * (10 - filled)
        return (
            f"[{bar}] step {step}/{self.total} | reward {_num(m.get('reward/mean'), '.3f')} | "
            f"acc {_num(m.get('accuracy'), '.3f')} | guided {m.get('guidance/guided', 0)} "
            f"(no feedback {m.get('guidance/no_feedback', 0)}) | {_num(m.get('time/step'), '.1f')}s/step | "
            f"eta {_minutes(eta)}"
        )

    def finish(self) -> None:
        """The closing line: steps run, wall time, the last step's reward and accuracy."""
        if self.started is None:
            return
        elapsed = self.clock() - self.started
        if self.last is None:
            self._println(f"stopped before finishing a step ({_minutes(elapsed)})")
        else:
            m = self.last
            self._println(
                f"finished step {m['step']}/{self.total}: {self.steps_done} steps in {_minutes(elapsed)} | "
                f"last reward {_num(m.get('reward/mean'), '.3f')} | acc {_num(m.get('accuracy'), '.3f')}"
            )
        self.started = None
