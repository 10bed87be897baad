"""Turn SIGTERM/SIGINT (or a request from code) into an orderly stop with a grace period.

A stop ends dispatching at once; quanta already running get ``grace`` seconds to
finish, and what finishes is staged like any other result.  After the grace period
the engine kills busy worker processes; a quantum running in the pilot's own
process (``--processes 0``) is abandoned by `InterruptedRun`, raised into it from a
``SIGALRM`` timer, since nothing else can stop a task in the middle of its Python
code.  Either way the quanta cut short are ``not_run`` and finished ones keep
their results.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from .errors import InterruptedRun


class StopRequest:
    """Whether, why and until when running work may go on after a stop was asked.

    Parameters
    ----------
    grace : `float`
        Seconds running quanta get to finish once a stop is requested.
    """

    def __init__(self, grace: float = 60.0) -> None:
        self.grace = grace
        self.reason: str | None = None
        self.deadline: float | None = None
        """`time.monotonic` time after which running quanta are cut short."""
        self._in_process_task = False
        self._later: list[str] = []

    def request(self, reason: str) -> None:
        """Ask for a stop (from a signal handler or another thread); the first reason wins.

        A later reason is not lost: `clear` turns it into the request (a SIGTERM that
        comes while the pilot stops a bundle whose lease was withdrawn still drains it).
        """
        if self.reason is not None:
            if reason != self.reason and reason not in self._later:
                self._later.append(reason)
            return
        self.reason = reason
        self.deadline = time.monotonic() + self.grace
        if self._in_process_task:
            self._arm_timer()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: a stop request naming the signal."""
        self.request(f"received {signal.Signals(signum).name}")

    def clear(self) -> None:
        """Forget the request (the next bundle runs normally), unless another came meanwhile."""
        self.reason = None
        self.deadline = None
        later, self._later = self._later, []
        if later:
            self.request(later[0])

    @contextlib.contextmanager
    def grace_limited(self) -> Iterator[None]:
        """Run a task in this process so that a stop lets it finish within the grace period only.

        Only the main thread can take a signal; elsewhere the task simply runs to its end.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGALRM, self._grace_expired)
        self._in_process_task = True
        if self.deadline is not None:
            self._arm_timer()
        try:
            yield
        finally:
            self._in_process_task = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _arm_timer(self) -> None:
        assert self.deadline is not None
        # setitimer works from any thread; the kernel delivers SIGALRM to the process and
        # Python runs the handler in the main thread, where the task is.
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - time.monotonic()))

    def _grace_expired(self, signum: int, frame: FrameType | None) -> None:
        if self._in_process_task:
            self._in_process_task = False
            raise InterruptedRun(
                f"interrupted: {self.reason}; abandoned after the {self.grace:.0f} s grace period"
            )


@contextlib.contextmanager
def stop_on_signals(*signums: int, grace: float = 60.0) -> Iterator[StopRequest]:
    """Install a `StopRequest` handler for ``signums`` for the duration of the block."""
    stop = StopRequest(grace)
    previous = {signum: signal.signal(signum, stop.handle) for signum in signums}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
