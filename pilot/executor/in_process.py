"""A pool of one worker that is the pilot's own process (``--processes 0``, for a debugger).

It answers the engine's requests with the same `SessionHost` a worker process
uses, so dispatch, blocking, fail-fast and stop behave exactly as with
`WorkerPool`.  What differs, and why:

- a request is carried out when the engine next asks for `events`, not when it is
  sent, so the engine's loop stays the one loop of both modes;
- nothing can kill the pilot's own process after the grace period, so a quantum
  runs under `StopRequest.grace_limited`: a stop lets it finish within the grace,
  then `InterruptedRun` is raised into it and it is reported as a dead worker
  (``not_run``); the sessions stay open, since this process did not die and the
  records of the quanta it finished are needed for stage-out (no quantum is
  dispatched after a stop, so the abandoned one's half-state is never read);
- there is no memory watch: the pilot cannot kill itself and carry on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import uuid

from ..errors import InterruptedRun
from ..interruption import StopRequest
from .worker import RunQuantum, SessionHost, Shutdown, WorkerDied


@dataclasses.dataclass
class InProcessWorker:
    """The one worker: index 0, and the quantum it was asked to run."""

    index: int = 0
    busy: tuple[str, uuid.UUID] | None = None


class InProcessPool:
    """One worker in this process; see the module docstring."""

    size = 1

    def __init__(self, stop: StopRequest | None = None) -> None:
        self.stop = stop if stop is not None else StopRequest()
        self.replaced = 0
        self._worker = InProcessWorker()
        self._host = SessionHost(0)
        self._inbox: collections.deque[object] = collections.deque()

    @property
    def workers(self) -> list[InProcessWorker]:
        return [self._worker]

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Ready at once: the stack is imported by whoever called us."""

    def send(self, worker: InProcessWorker, message: object) -> bool:
        """Queue ``message``; it is carried out by the next `events` call."""
        self._inbox.append(message)
        return True

    def events(self, timeout: float) -> list[tuple[InProcessWorker, object]]:
        """Carry out the oldest queued request and return its reply (or the worker's 'death')."""
        if not self._inbox:
            return []
        message = self._inbox.popleft()
        if isinstance(message, Shutdown):
            return []
        limit = self.stop.grace_limited() if isinstance(message, RunQuantum) else contextlib.nullcontext()
        try:
            with limit:
                reply = self._host.answer(message)
        except InterruptedRun as err:
            return [(self._worker, WorkerDied(str(err)))]
        return [] if reply is None else [(self._worker, reply)]

    def replace(self, worker: InProcessWorker) -> InProcessWorker:
        """After an abandoned quantum: the same worker, its sessions kept (see the module docstring)."""
        worker.busy = None
        return worker

    def kill_busy(self, reason: str) -> None:
        """Nothing to kill: a running quantum is abandoned by the stop's own timer."""

    def close(self) -> None:
        """Close every open session."""
        self._host.close()
        self._inbox.clear()
