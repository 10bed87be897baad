"""The warm worker process: opens bundles and runs the quanta the pilot sends it.

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
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

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


@dataclasses.dataclass(frozen=True)
class Closed:
    key: str
    io: IoCounts
    records: dict[str, Any]
    """Serialized `DatastoreRecordData` by datastore name."""


def worker_main(conn: Connection, index: int, console_level: int) -> None:
    """Serve requests from the pilot until `Shutdown` or the pipe closes."""
    configure_logging(console_level)
    from .bundle_session import BundleSession

    # The pilot decides what a signal means (drain, grace, kill); workers do not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sessions: dict[str, BundleSession] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        match message:
            case OpenBundle(spec):
                try:
                    sessions[spec.key] = BundleSession(spec)
                    conn.send(Opened(spec.key))
                except Exception as err:
                    conn.send(Opened(spec.key, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
            case RunQuantum(key, quantum_id, evict):
                session = sessions[key]
                session.butler.evict(evict)
                result = session.run(quantum_id, worker=index)
                conn.send(QuantumDone(key, result, tuple(session.butler.held())))
            case CloseBundle(key):
                closing = sessions.pop(key, None)
                io, records = IoCounts(), {}
                if closing is not None:
                    records = {k: v.to_simple() for k, v in closing.butler.persisted_records().items()}
                    io = closing.butler.io
                    closing.close()
                conn.send(Closed(key, io, records))
            case Ping():
                conn.send(Pong(os.getpid()))
            case Shutdown():
                break
    for session in sessions.values():
        session.close()
