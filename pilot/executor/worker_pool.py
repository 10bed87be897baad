"""The pilot's pool of warm worker processes: start, talk, watch memory, replace the dead.

Workers are forked from a forkserver that preloaded the LSST stack (no fork of the
pilot itself, which may run threads), so the stack is imported once per pilot.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
import time
import uuid
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from ..bundle_model import ExecutionSpec
from ..errors import ConfigError
from ..log_setup import console_level
from ..slot import available_cores, parse_size
from .watchdog import QuantumLimits, QuantumWatch
from .worker import HEAVY_MODULE, Ping, Pong, QuantumDone, RunQuantum, Shutdown, WorkerDied, worker_main

_LOG = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclasses.dataclass
class WorkerHandle:
    """One worker process and what the pilot last asked of it."""

    index: int
    process: BaseProcess
    conn: Connection
    busy: tuple[str, uuid.UUID] | None = None
    opened: set[str] = dataclasses.field(default_factory=set)
    doomed: WorkerDied | None = None
    watch: QuantumWatch | None = None
    """The running quantum's limits and progress, from its dispatch to its result."""


class WorkerPool:
    """``size`` persistent workers; ``memory_limit`` bytes of RSS each (with children), if set.

    Between bundles, `resize` changes the number of workers and ``memory_limit`` may be
    set to another budget (or `None`): the memory watch reads it at every poll.
    """

    def __init__(self, size: int, memory_limit: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        self.size = size
        self.memory_limit = memory_limit
        self._context: Any = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([HEAVY_MODULE])
        self._workers: list[WorkerHandle] = []
        self._starter: threading.Thread | None = None
        self.replaced = 0

    def start(self) -> None:
        """Start the forkserver and, in the background, the workers; return at once.

        The forkserver imports the LSST stack while the pilot goes on reading the
        bundle and staging in; the first use of `workers` waits for the start-up.
        """
        multiprocessing.forkserver.ensure_running()
        self._starter = threading.Thread(target=self._start_all, name="pilot-pool-start", daemon=True)
        self._starter.start()

    def _start_all(self) -> None:
        self._workers = [self._spawn(index) for index in range(self.size)]

    @property
    def workers(self) -> list[WorkerHandle]:
        """The workers (waiting for their start-up if it is still going on)."""
        if self._starter is not None:
            self._starter.join()
            self._starter = None
        return self._workers

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until every worker answers (the stack is imported and the pool is warm)."""
        waiting = {w.index for w in self.workers if self.send(w, Ping())}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for worker, event in self.events(0.1):
                if isinstance(event, Pong | WorkerDied):
                    waiting.discard(worker.index)
                if isinstance(event, WorkerDied):
                    self.replace(worker)

    def _spawn(self, index: int) -> WorkerHandle:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, index, console_level()), name=f"pilot-worker-{index}"
        )
        process.start()
        child.close()
        return WorkerHandle(index, process, parent)

    def send(self, worker: WorkerHandle, message: object) -> bool:
        """Send ``message``; return `False` if the worker is gone.  A `RunQuantum` starts its watch."""
        if isinstance(message, RunQuantum):
            budget = None if self.memory_limit is None else int(self.memory_limit * message.memory_factor)
            limits = QuantumLimits(budget, message.time_limit, message.hang_seconds)
            worker.watch = QuantumWatch(limits, started=time.monotonic())
        try:
            worker.conn.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False

    def events(self, timeout: float) -> list[tuple[WorkerHandle, object]]:
        """Wait up to ``timeout`` s; return ``(worker, message or WorkerDied)`` pairs."""
        self._watch()
        by_waitable: dict[Any, WorkerHandle] = {}
        for worker in self.workers:
            by_waitable[worker.conn] = worker
            by_waitable[worker.process.sentinel] = worker
        ready = wait(list(by_waitable), timeout=timeout)
        out: list[tuple[WorkerHandle, object]] = []
        handled: set[int] = set()
        for waitable in ready:
            worker = by_waitable[waitable]
            if worker.index in handled:
                continue
            handled.add(worker.index)
            broken = False
            try:
                while worker.conn.poll():
                    message = worker.conn.recv()
                    if isinstance(message, QuantumDone):
                        worker.watch = None
                    out.append((worker, message))
            except (EOFError, OSError):
                broken = True
            if broken or not worker.process.is_alive():
                worker.process.join(timeout=5)
                out.append((worker, worker.doomed or WorkerDied(_death_reason(worker.process.exitcode))))
        return out

    def _watch(self) -> None:
        """Kill the workers whose quantum is over a limit (`pilot.executor.watchdog`)."""
        now = time.monotonic()
        for worker in self.workers:
            watch = worker.watch
            if watch is None or worker.busy is None or worker.doomed is not None or not watch.due(now):
                continue
            try:
                verdict = watch.look(psutil.Process(worker.process.pid), now)
            except psutil.Error:
                continue  # it is exiting: its death is handled as such
            if verdict is not None:
                worker.doomed = WorkerDied(verdict.reason, verdict.kind)
                _LOG.warning("Worker %d: %s", worker.index, verdict.reason)
                worker.process.kill()

    @property
    def running(self) -> int:
        """Workers running a quantum (dispatched, not finished); safe to read from another thread."""
        return sum(1 for worker in list(self._workers) if worker.busy is not None)

    def resize(self, size: int, timeout: float = 10.0) -> None:
        """Grow or shrink the pool to ``size`` workers, keeping the forkserver (between bundles).

        New workers are forked from the warm forkserver; surplus workers (the last ones)
        are asked to stop, and killed if they do not within ``timeout`` seconds.

        Raises
        ------
        ValueError
            ``size`` is below 1, or a surplus worker is running a quantum.
        """
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        workers = self.workers
        surplus = workers[size:]
        if any(worker.busy is not None for worker in surplus):
            raise ValueError("cannot shrink the pool while its surplus workers run quanta")
        del workers[size:]
        workers.extend(self._spawn(index) for index in range(len(workers), size))
        for worker in surplus:
            self.send(worker, Shutdown())
        for worker in surplus:
            worker.process.join(timeout=timeout)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=timeout)
            worker.conn.close()
        self.size = size

    def replace(self, worker: WorkerHandle) -> WorkerHandle:
        """Start a fresh worker in a dead one's place."""
        worker.conn.close()
        fresh = self._spawn(worker.index)
        self.workers[worker.index] = fresh
        self.replaced += 1
        return fresh

    def kill_busy(self, reason: str) -> None:
        """Kill every worker still running a quantum (after the grace period)."""
        for worker in self.workers:
            if worker.busy is not None and worker.process.is_alive():
                worker.doomed = WorkerDied(reason)
                worker.process.kill()

    def close(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop; kill those that do not."""
        for worker in self.workers:
            self.send(worker, Shutdown())
        for worker in self.workers:
            worker.process.join(timeout=timeout)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=timeout)
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"worker process killed by {name} (signal {number})"
    return f"worker process exited with status {exitcode}"


def pool_for(
    execution: ExecutionSpec, processes: int | None, memory_per_worker: str | None
) -> WorkerPool | None:
    """Start the pool a bundle asks for: the command line wins over the bundle, then the slot's cores.

    Returns `None` for 0 processes (run in the pilot).

    Raises
    ------
    ConfigError
        The memory budget is not a size (checked for 0 processes too).
    """
    budget = memory_per_worker or execution.memory_per_worker
    try:
        limit = parse_size(budget) if budget else None
    except ValueError as err:
        raise ConfigError(f"--memory-per-worker: {err}") from None
    size = processes if processes is not None else execution.processes
    if size is None:
        size = available_cores()
    if size == 0:
        return None
    pool = WorkerPool(size, limit)
    pool.start()
    return pool
