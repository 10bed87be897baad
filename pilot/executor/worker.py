"""The warm worker: the messages it takes, the sessions it holds, and its process's main loop.

Started once per pilot from a forkserver that has already imported the LSST stack,
so a worker (or its replacement after a crash) starts in milliseconds and keeps
its bundle sessions — graph, butler, in-memory intermediates — across quanta.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import traceback
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from ..log_setup import configure_logging
from ..report import IoCounts, QuantumResult

if TYPE_CHECKING:
    from .bundle_session import BundleSession, SessionSpec

# This module stays light: the pilot imports it before the LSST stack, to start the
# pool at once.  The forkserver preloads HEAVY_MODULE (the stack, and deafness to
# SIGTERM) so every worker starts with the stack already imported.
HEAVY_MODULE = "pilot.executor.forkserver_preload"


@dataclasses.dataclass(frozen=True)
class OpenBundle:
    spec: SessionSpec


@dataclasses.dataclass(frozen=True)
class RunQuantum:
    key: str
    quantum_id: uuid.UUID
    evict: tuple[uuid.UUID, ...] = ()
    time_limit: float | None = None
    """Wall seconds the quantum may run (the pool's watchdog enforces it; see `watchdog`)."""
    hang_seconds: float | None = None
    """Seconds without CPU progress, stopped or stuck in the kernel, before it counts as hung."""
    memory_factor: float = 1.0
    """This run's memory budget as a multiple of the pool's (a retry after a memory failure)."""
    attempt: int = 1
    """Its attempt in this job: a retry first removes what a failed attempt left (its log)."""


@dataclasses.dataclass(frozen=True)
class CloseBundle:
    key: str


@dataclasses.dataclass(frozen=True)
class Shutdown:
    pass


@dataclasses.dataclass(frozen=True)
class Ping:
    pass


@dataclasses.dataclass(frozen=True)
class Pong:
    pid: int


@dataclasses.dataclass(frozen=True)
class Opened:
    key: str
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantumDone:
    key: str
    result: QuantumResult
    held: tuple[uuid.UUID, ...]
    records: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Serialized `DatastoreRecordData` (by datastore name) of the files the quantum wrote."""
    checksums: dict[uuid.UUID, tuple[int, str | None]] = dataclasses.field(default_factory=dict)
    """``(size, blake2b)`` of each of those files, by dataset ID."""


@dataclasses.dataclass(frozen=True)
class Closed:
    key: str
    io: IoCounts


@dataclasses.dataclass(frozen=True)
class WorkerDied:
    """A worker process ended while the pilot still needed it."""

    reason: str
    kind: Literal["died", "memory", "timeout", "hang"] = "died"
    """``memory``/``timeout``/``hang``: the pool killed it for the quantum's memory or time limit."""

    @property
    def memory(self) -> bool:
        return self.kind == "memory"


class Worker(Protocol):
    """What the engine sees of a worker: its index and the quantum it runs."""

    index: int
    busy: tuple[str, uuid.UUID] | None


W = TypeVar("W", bound=Worker)


class Pool(Protocol[W]):
    """What the engine needs of a pool of workers (`WorkerPool`, `InProcessPool`)."""

    size: int
    replaced: int

    @property
    def workers(self) -> Sequence[W]: ...

    def wait_ready(self, timeout: float = 300.0) -> None: ...

    def send(self, worker: W, message: object) -> bool: ...

    def events(self, timeout: float) -> list[tuple[W, object]]: ...

    def replace(self, worker: W) -> W: ...

    def kill_busy(self, reason: str) -> None: ...

    def close(self) -> None: ...


class SessionHost:
    """The bundle sessions one worker holds, and its answer to each of the pilot's requests.

    The same host serves a worker process (`worker_main`) and the pilot's own
    process (`pilot.executor.in_process.InProcessPool`), so both modes run quanta
    the same way.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.sessions: dict[str, BundleSession] = {}

    def answer(self, message: object) -> object | None:
        """Carry out one request and return the reply to send (`None`: no reply)."""
        match message:
            case OpenBundle(spec):
                from .bundle_session import BundleSession

                try:
                    self.sessions[spec.key] = BundleSession(spec)
                    return Opened(spec.key)
                except Exception as err:
                    return Opened(spec.key, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            case RunQuantum(key, quantum_id, evict) as run:
                session = self.sessions[key]
                session.butler.evict(evict)
                if run.attempt > 1:
                    session.forget_outputs(quantum_id)
                result = session.run(quantum_id, worker=self.index)
                new = session.butler.take_new_outputs()
                records = {name: data.to_simple() for name, data in new.records.items()}
                return QuantumDone(key, result, tuple(session.butler.held()), records, new.checksums)
            case CloseBundle(key):
                closing = self.sessions.pop(key, None)
                if closing is None:
                    return Closed(key, IoCounts())
                io = closing.butler.io
                closing.close()
                return Closed(key, io)
            case Ping():
                return Pong(os.getpid())
        return None

    def close(self) -> None:
        """Close every open session."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()


def worker_main(conn: Connection, index: int, console_level: int) -> None:
    """Serve requests from the pilot until `Shutdown` or the pipe closes."""
    configure_logging(console_level)
    # The pilot decides what a signal means (drain, grace, kill); workers do not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    host = SessionHost(index)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if isinstance(message, Shutdown):
            break
        reply = host.answer(message)
        if reply is not None:
            conn.send(reply)
    host.close()
