"""Turn SIGTERM/SIGINT into an orderly stop that never corrupts the pilot's bookkeeping.

A signal that arrives while a task runs abandons that quantum (`InterruptedRun` is
raised inside it); one that arrives between quanta only stops the loop before the
next one.  Either way finished quanta keep their results and are staged out.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from .errors import InterruptedRun


class StopRequest:
    """Records a stop request; raises into a running task only while one is running."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._task_running = False

    def request(self, reason: str) -> None:
        """Ask for a stop from code (another thread, say): dispatching ends, running quanta get grace."""
        if self.reason is None:
            self.reason = reason

    def clear(self) -> None:
        """Forget a request made with `request` (the next bundle runs normally)."""
        self.reason = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler."""
        self.reason = f"received {signal.Signals(signum).name}"
        if self._task_running:
            self._task_running = False
            raise InterruptedRun(self.reason)

    @contextlib.contextmanager
    def task_running(self) -> Iterator[None]:
        """Mark the span in which a signal should abandon the running task."""
        if self.reason is not None:
            raise InterruptedRun(self.reason)
        self._task_running = True
        try:
            yield
        finally:
            self._task_running = False


@contextlib.contextmanager
def stop_on_signals(*signums: int) -> Iterator[StopRequest]:
    """Install a `StopRequest` handler for ``signums`` for the duration of the block."""
    stop = StopRequest()
    previous = {signum: signal.signal(signum, stop.handle) for signum in signums}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
