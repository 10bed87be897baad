"""Which of several ``pilot serve`` replicas on one queue database does the background work.

Every replica answers claims, heartbeats and reports: the database settles their races.
Lease expiry and ingest into the DBB are done by one replica at a time, the *leader*:

1. On PostgreSQL the leader holds a session-level advisory lock on a connection of its
   own.  If the leader dies, its connection closes and the lock is free: another replica
   takes it at its next try (every sweep interval), so nothing waits on a dead process.
2. On a sqlite file the leader holds an exclusive ``flock`` on ``<database>.leader``; the
   kernel drops it with the process.  (Replicas on one sqlite file are not supported — the
   README says PostgreSQL — but a second ``pilot serve`` by mistake must not ingest twice.)
3. An in-memory sqlite database belongs to one process: that process leads.
4. A replica that loses its connection loses the lead (``held`` answers False) and tries
   again later; the work it was doing is idempotent (expiry and ingest are conditional).
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from .store import QueueStore

_LOG = logging.getLogger(__name__)

ADVISORY_KEY = 0x70696C6F74  # "pilot": the advisory lock every replica of one database contends for


class Leadership:
    """Whether this process is the leading replica of ``store``'s database; thread-safe."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._conn: sa.Connection | None = None  # PostgreSQL: the session holding the advisory lock
        self._file: IO[bytes] | None = None  # sqlite: the flocked file
        self._memory = store.dialect == "sqlite" and store.engine.url.database in (None, "", ":memory:")

    def held(self) -> bool:
        """Whether this process leads now, taking the lead if it is free."""
        with self._lock:
            if self._memory:
                return True
            if self._store.dialect == "postgresql":
                return self._postgres()
            return self._sqlite()

    def _postgres(self) -> bool:
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                return True
            except sa.exc.DBAPIError:
                _LOG.warning("Lost the connection holding the scheduler lead; will try to take it again.")
                self._conn.invalidate()
                self._conn.close()
                self._conn = None
        conn = self._store.engine.connect()
        took = conn.execute(sa.select(sa.func.pg_try_advisory_lock(ADVISORY_KEY))).scalar()
        conn.commit()  # end the transaction; the session-level lock stays with the connection
        if not took:
            conn.close()
            return False
        # A warning: where the background work happens is worth a line at the default level.
        _LOG.warning("This replica leads: it sweeps lapsed leases and ingests staged bundles.")
        self._conn = conn
        return True

    def _sqlite(self) -> bool:
        if self._file is not None:
            return True
        path = Path(str(self._store.engine.url.database) + ".leader")
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        """Give up the lead (at shutdown)."""
        with self._lock:
            if self._conn is not None:
                self._conn.invalidate()  # close the session itself (not back to the pool): the lock ends
                self._conn.close()
                self._conn = None
            if self._file is not None:
                self._file.close()
                self._file = None
