"""Stop a run cleanly on SIGINT (Ctrl-C) or SIGTERM (``kill``, job schedulers): finish the step, save, explain.

The first signal only sets a flag; the training loop looks at it after each step, saves a checkpoint and
returns, and the command line prints how to resume and exits with 128 + the signal number (130 for SIGINT,
143 for SIGTERM), as shells expect. A second signal aborts at once with ``KeyboardInterrupt``; the last complete
checkpoint is then where ``--resume`` continues from.

Python lets only the main thread install signal handlers, so elsewhere (a trainer run from a worker thread, a
notebook helper) this does nothing and the default behaviour stays. Previous handlers are restored on exit,
because the trainer is also used as a library inside other programs.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager around a training loop; ``requested`` turns True after the first SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int:
        """What a shell expects from a program ended by this signal: 128 + its number."""
        return 128 + (self.signum or 0)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # e.g. an embedded interpreter without signal support
                    continue
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None means "installed from C": the best we can restore is the default
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting now")
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: finishing the current step, then saving a checkpoint "
            "(send it again, e.g. Ctrl-C, to abort at once)",
            file=sys.stderr, flush=True,
        )
