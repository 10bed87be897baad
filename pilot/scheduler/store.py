"""The queue of bundles, leases and pilots in a SQL database (sqlite or PostgreSQL).

Every change is one transaction.  Races are settled by conditional updates whose row
count is checked: a bundle goes ``queued → running`` only ``WHERE state = 'queued'``,
a lease ends only ``WHERE state = 'active'``, so two pilots never get one bundle and a
lease is finished (reported, released or expired) exactly once.  That holds across
processes too: several ``pilot serve`` replicas may share one PostgreSQL database.

What keeps requests fast when a thousand pilots share one scheduler:

1. On PostgreSQL a claim picks its bundle ``FOR UPDATE SKIP LOCKED``: concurrent claims
   take different bundles instead of queueing on the row lock of the first queued one
   and then failing its conditional update one after another.
2. On sqlite every writing transaction of this process takes one Python lock before
   ``BEGIN IMMEDIATE``.  sqlite itself lets a blocked writer sleep in its busy handler
   (steps of up to 100 ms) rather than wake it when the lock is free; a queue on a
   Python lock is served in microseconds.  Readers don't take it (WAL).
3. Inserts that may meet a concurrent twin (a pilot's first contact, a bundle queued by
   two replicas loading one directory) are upserts, not check-then-insert.
4. Lease expiry is not done here on the request path: `pilot.scheduler.server` sweeps.
5. sqlite's automatic WAL checkpoint runs in whichever transaction commits past 1000
   pages, fsyncs the database file there, and every queued writer waits for it.  It is
   turned off; a thread of the store checkpoints every second (``PASSIVE``: it never
   blocks a writer) instead.
6. The statements of claim, heartbeat and report are built once (`statements`): building
   them per request had been most of the server's CPU.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, NoReturn

import sqlalchemy as sa

from ..protocol import FinishResponse, PilotStatus, Progress, Slot, StatusResponse
from . import statements as sql
from .errors import LeaseGone, LeaseNotFound
from .tables import INDEXES, bundles, deps, leases, metadata, pilots

_LOG = logging.getLogger(__name__)


def iso(t: float) -> str:
    """Format an epoch time as UTC ISO 8601."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class BundleRow:
    """What the queue records of one bundle."""

    bundle_id: str
    path: str
    n_quanta: int
    cores: int
    memory_mb: int | None
    est_seconds: float
    root: str
    generation: int = 0
    attempts: int = 0
    disk_mb: int | None = None
    workflow_id: str | None = None
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A bundle handed to a pilot."""

    bundle_id: str
    path: str
    lease_id: str
    expires_at: float
    upstream: list[str]  # committed bundles whose outputs it may consume, in queue order


@dataclasses.dataclass(frozen=True)
class LeaseView:
    """A lease and the bundle it holds."""

    state: str
    result: FinishResponse | None
    bundle: BundleRow


@dataclasses.dataclass(frozen=True)
class FinishPlan:
    """The end of a lease, decided by the caller from the bundle file and staging."""

    lease_id: str
    bundle_id: str
    kind: Literal["report", "release", "expiry"]
    now: float
    staged: bool
    result: FinishResponse
    remainder: BundleRow | None
    exit_code: int | None = None


def _engine(url: str, pool_size: int) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" below start transactions (pysqlite's own are deferred).
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            # Rule 5: no checkpoint in a committing request; `QueueStore` checkpoints aside.
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            # A writer (`QueueStore.tx`) takes the write lock up front: a read-then-write
            # transaction never fails to upgrade.  A reader (SQLAlchemy begins one on its
            # first statement) must not: in WAL mode a deferred read never blocks a writer,
            # whereas an immediate one would queue every read behind the writes and back.
            writer = connection.get_execution_options().get("writer", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    # No pre-ping: it is one more round trip per transaction.  After a database restart the
    # first use of each stale connection fails (a 500, which pilots retry) and SQLAlchemy
    # then drops the whole pool.
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)


class QueueStore:
    """Bundles, their dependencies, leases and pilots, in the database at ``url``."""

    def __init__(self, url: str, pool_size: int = 16) -> None:
        self.url = url
        self._engine = _engine(url, pool_size)
        self.dialect = self._engine.dialect.name
        # Rule 2 of the module docstring: one writer at a time in this process on sqlite.
        self._writer: AbstractContextManager[object] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        metadata.create_all(self._engine)
        self._add_new_columns()
        for index in INDEXES:
            index.create(self._engine, checkfirst=True)
        self._closing = threading.Event()
        if self.dialect == "sqlite":
            threading.Thread(target=self._checkpoint, name="wal-checkpoint", daemon=True).start()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file every second, off the requests' path (rule 5)."""
        while not self._closing.wait(1.0):
            try:
                with self._engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except sa.exc.DBAPIError as err:  # try again next time; the WAL only grows meanwhile
                _LOG.warning("WAL checkpoint of the queue database failed: %s", err)

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def close(self) -> None:
        self._closing.set()
        self._engine.dispose()

    def _add_new_columns(self) -> None:
        """Give a queue database made by an earlier version the columns added since (all nullable)."""
        inspector = sa.inspect(self._engine)
        for table in metadata.sorted_tables:
            have = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self._engine.dialect)
                    with self.tx() as conn:
                        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
                    _LOG.warning("Added column %s.%s to the queue database.", table.name, column.name)

    def connect(self) -> sa.Connection:
        """A connection for reading (``with store.connect() as conn``)."""
        return self._engine.connect()

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        """A writing transaction (``with store.tx() as conn``); not reentrant."""
        with self._writer, self._engine.connect() as conn, conn.execution_options(writer=True).begin():
            yield conn

    def add_bundle(self, row: BundleRow, depends_on: list[str]) -> bool:
        """Queue a bundle unless it is known already; return whether it was added."""
        with self.tx() as conn:
            return self.insert_bundle(conn, row, depends_on)

    def insert_bundle(self, conn: sa.Connection, row: BundleRow, depends_on: list[str]) -> bool:
        if conn.execute(sa.select(bundles.c.bundle_id).where(bundles.c.bundle_id == row.bundle_id)).first():
            return False
        seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(bundles.c.seq), 0))).scalar_one() + 1
        values = dataclasses.asdict(row) | {"seq": seq, "state": "queued", "staged": False, "ingest": "none"}
        added = conn.execute(sql.insert_for(self.dialect, bundles).values(**values).on_conflict_do_nothing())
        if added.rowcount != 1:
            return False  # another replica queued it just now
        for dep in dict.fromkeys(depends_on):
            conn.execute(deps.insert().values(bundle_id=row.bundle_id, dep_id=dep))
        return True

    def claim(
        self, pilot_id: str, slot: Slot, now: float, ttl: float, claim_key: str | None = None
    ) -> Claimed | None:
        """Lease the first queued, ready bundle that fits ``slot``; None if there is none.

        A claim with the ``claim_key`` of an earlier claim of this pilot gets that claim's
        lease back (whatever its state now), so a pilot that lost the answer and asks
        again holds one bundle, not two.
        """
        try:
            return self._claim(pilot_id, slot, now, ttl, claim_key)
        except sa.exc.IntegrityError:
            # The same retried claim reached another thread or replica at the same moment:
            # the unique (pilot_id, claim_key) index let one of them lease; answer with that.
            with self.connect() as conn:
                earlier = None if claim_key is None else self._claimed_with(conn, pilot_id, claim_key)
            if earlier is None:
                raise
            return earlier

    def _claim(
        self, pilot_id: str, slot: Slot, now: float, ttl: float, claim_key: str | None
    ) -> Claimed | None:
        with self.tx() as conn:
            if claim_key is not None:
                if self.dialect == "postgresql":
                    # Copies of one retried claim wait for each other (sqlite: rule 2 does it);
                    # else a copy could find every bundle locked by the others and say "no work".
                    conn.execute(sql.CLAIM_KEY_LOCK, {"pilot_and_key": f"{pilot_id}\n{claim_key}"})
                if earlier := self._claimed_with(conn, pilot_id, claim_key):
                    self._seen(conn, pilot_id, now)
                    return earlier
            lease_id = uuid.uuid4().hex
            taken = conn.execute(
                sql.take(sql.slot_shape(slot)), {"new_lease_id": lease_id, **sql.slot_params(slot)}
            ).first()
            if taken is None:
                self._seen(conn, pilot_id, now)
                return None
            lease = {"lease_id": lease_id, "bundle_id": taken.bundle_id, "pilot_id": pilot_id}
            lease |= {"state": "active", "expires_at": now + ttl, "claim_key": claim_key}
            conn.execute(sql.INSERT_LEASE, lease)
            self._seen(conn, pilot_id, now, lease_id=lease_id)
            upstream = self._upstream(conn, taken.bundle_id)
            return Claimed(taken.bundle_id, taken.path, lease_id, now + ttl, upstream)

    def _claimed_with(self, conn: sa.Connection, pilot_id: str, claim_key: str) -> Claimed | None:
        """The lease an earlier claim with this key got, if any."""
        row = conn.execute(sql.CLAIMED_WITH, {"pilot_id": pilot_id, "claim_key": claim_key}).first()
        if row is None:
            return None
        return Claimed(
            row.bundle_id, row.path, row.lease_id, row.expires_at, self._upstream(conn, row.bundle_id)
        )

    waiting = staticmethod(sql.waiting)

    @staticmethod
    def deps_of(conn: sa.Connection, bundle_id: str) -> list[str]:
        """The bundles ``bundle_id`` waits for."""
        return list(conn.execute(sa.select(deps.c.dep_id).where(deps.c.bundle_id == bundle_id)).scalars())

    @staticmethod
    def _upstream(conn: sa.Connection, bundle_id: str) -> list[str]:
        return list(conn.execute(sql.UPSTREAM, {"bundle_id": bundle_id}).scalars())

    def _seen(
        self,
        conn: sa.Connection,
        pilot_id: str,
        now: float,
        heartbeat: bool = False,
        lease_id: str | None = None,
    ) -> None:
        """Record that the pilot was heard from (and its new lease): one upsert."""
        values = {"v_pilot_id": pilot_id, "v_last_seen": now, "v_last_heartbeat": now, "v_lease_id": lease_id}
        conn.execute(sql.seen(self.dialect, heartbeat, lease_id is not None), values)

    def heartbeat(self, lease_id: str, progress: str, now: float, ttl: float) -> float:
        """Extend an active lease; return its new expiry.

        A lease past its expiry that was not yet expired is extended: its pilot is alive.
        """
        with self.tx() as conn:
            extend = {"the_lease": lease_id, "new_expiry": now + ttl, "new_progress": progress}
            pilot_id = conn.execute(sql.EXTEND, extend).scalar()
            if pilot_id is None:
                self._refuse(conn, lease_id)
            self._seen(conn, pilot_id, now, heartbeat=True)
        return now + ttl

    @staticmethod
    def _refuse(conn: sa.Connection, lease_id: str) -> NoReturn:
        state = conn.execute(sa.select(leases.c.state).where(leases.c.lease_id == lease_id)).scalar()
        if state is None:
            raise LeaseNotFound(f"no lease {lease_id}")
        raise LeaseGone(f"lease {lease_id} is {state}: its bundle is no longer this pilot's")

    def lease_view(self, lease_id: str) -> LeaseView:
        """Return a lease's state, its recorded result and its bundle."""
        with self.connect() as conn:
            row = conn.execute(_LEASE_VIEW, {"lease_id": lease_id}).first()
        if row is None:
            raise LeaseNotFound(f"no lease {lease_id}")
        result = None if row.result is None else FinishResponse.model_validate_json(row.result)
        return LeaseView(row.state, result, bundle_row(row._mapping))

    def finish(self, plan: FinishPlan) -> FinishResponse | None:
        """End a lease as ``plan`` says, once: a repeated report gets the first answer back.

        An expiry of a lease that is no longer due (a heartbeat came, or a report) does
        nothing and returns None.

        Raises
        ------
        LeaseGone
            The lease expired (its quanta were re-queued).
        """
        lease_state = "expired" if plan.kind == "expiry" else "finished"
        ending = {"the_lease": plan.lease_id, "now": plan.now, "new_state": lease_state}
        with self.tx() as conn:
            ended = conn.execute(
                sql.end_lease(plan.kind == "expiry"), ending | {"new_result": plan.result.model_dump_json()}
            )
            if ended.rowcount != 1:
                if plan.kind == "expiry":
                    return None
                row = conn.execute(
                    sa.select(leases.c.state, leases.c.result).where(leases.c.lease_id == plan.lease_id)
                ).first()
                if row is not None and row.state == "finished":
                    return FinishResponse.model_validate_json(row.result)
                self._refuse(conn, plan.lease_id)
            ended_bundle = {
                "bundle_id": plan.bundle_id,
                "state": plan.result.state,
                "remainder": plan.remainder.bundle_id if plan.remainder else None,
                "staged": plan.staged,
                "ingest": "pending" if plan.staged else "none",
                "finished_at": plan.now,
                "exit_code": plan.exit_code,
                "failed_quanta": plan.result.failed_quanta + plan.result.abandoned_quanta,
            }
            conn.execute(sql.END_BUNDLE, {f"b_{name}": value for name, value in ended_bundle.items()})
            conn.execute(sql.FREE_PILOT, {"the_lease": plan.lease_id})
            if plan.remainder is not None:
                self._queue_remainder(conn, plan.bundle_id, plan.remainder, plan.staged)
        return plan.result

    def _queue_remainder(self, conn: sa.Connection, parent: str, row: BundleRow, parent_staged: bool) -> None:
        self.insert_bundle(conn, row, self.deps_of(conn, parent) + ([parent] if parent_staged else []))
        # Bundles still waiting for the parent now wait for (and read from) the remainder too.
        waiting_for_parent = (
            sa.select(deps.c.bundle_id)
            .join(bundles, bundles.c.bundle_id == deps.c.bundle_id)
            .where(deps.c.dep_id == parent, bundles.c.state == "queued", deps.c.bundle_id != row.bundle_id)
        )
        for waiter in list(conn.execute(waiting_for_parent).scalars()):
            conn.execute(deps.insert().values(bundle_id=waiter, dep_id=row.bundle_id))

    def due_leases(self, now: float) -> list[tuple[str, str]]:
        """Return ``(lease_id, bundle_id)`` of active leases past their expiry."""
        with self.connect() as conn:
            query = sa.select(leases.c.lease_id, leases.c.bundle_id).where(
                leases.c.state == "active", leases.c.expires_at < now
            )
            return [(lease_id, bundle_id) for lease_id, bundle_id in conn.execute(query)]

    def bundle_row(self, bundle_id: str) -> BundleRow:
        with self.connect() as conn:
            row = conn.execute(sa.select(*ROW_COLUMNS).where(bundles.c.bundle_id == bundle_id)).one()
        return bundle_row(row._mapping)

    def pending_ingests(self) -> list[str]:
        """Bundles reported staged whose ingest has not finished, in queue order."""
        with self.connect() as conn:
            query = (
                sa.select(bundles.c.bundle_id).where(bundles.c.ingest == "pending").order_by(bundles.c.seq)
            )
            return list(conn.execute(query).scalars())

    def bundle_states(self) -> list[tuple[str, str, str]]:
        """``(bundle_id, path, state)`` of every bundle, in queue order."""
        with self.connect() as conn:
            query = sa.select(bundles.c.bundle_id, bundles.c.path, bundles.c.state).order_by(bundles.c.seq)
            return [(row.bundle_id, row.path, row.state) for row in conn.execute(query)]

    def set_ingest(self, bundle_id: str, state: Literal["done", "failed"]) -> None:
        with self.tx() as conn:
            conn.execute(bundles.update().where(bundles.c.bundle_id == bundle_id).values(ingest=state))

    @staticmethod
    def bundle_totals(conn: sa.Connection) -> dict[str, tuple[int, int]]:
        """``state: (bundles, quanta)`` of the bundles in each state (remainders included)."""
        query = sa.select(
            bundles.c.state, sa.func.count(), sa.func.coalesce(sa.func.sum(bundles.c.n_quanta), 0)
        ).group_by(bundles.c.state)
        return {state: (int(n), int(quanta)) for state, n, quanta in conn.execute(query)}

    @staticmethod
    def job_quanta(conn: sa.Connection) -> list[tuple[str | None, str, int]]:
        """``(job label, state, quanta)`` of the original bundles (a job's remainders not counted again)."""
        query = (
            sa.select(bundles.c.label, bundles.c.state, sa.func.sum(bundles.c.n_quanta))
            .where(bundles.c.generation == 0)
            .group_by(bundles.c.label, bundles.c.state)
        )
        return [(label, state, int(n or 0)) for label, state, n in conn.execute(query)]

    def status(self) -> StatusResponse:
        """Counts of bundles per state, staged bundles per ingest state, and the pilots."""
        with self.connect() as conn:
            by_state: dict[str, int] = dict(
                conn.execute(sa.select(bundles.c.state, sa.func.count()).group_by(bundles.c.state)).all()
            )
            waiting = conn.execute(
                sa.select(sa.func.count()).where(bundles.c.state == "queued", self.waiting(bundles))
            ).scalar_one()
            by_ingest: dict[str, int] = dict(
                conn.execute(
                    sa.select(bundles.c.ingest, sa.func.count())
                    .where(bundles.c.ingest != "none")
                    .group_by(bundles.c.ingest)
                ).all()
            )
            rows = conn.execute(
                sa.select(pilots, leases.c.bundle_id, leases.c.progress)
                .outerjoin(leases, leases.c.lease_id == pilots.c.lease_id)
                .order_by(pilots.c.pilot_id)
            ).all()
        return StatusResponse(
            bundles={
                state: int(by_state.get(state, 0))
                for state in ("queued", "running", *sql.FINISHED, "cancelled")
            },
            waiting=int(waiting),
            ingest={state: int(by_ingest.get(state, 0)) for state in ("pending", "done", "failed")},
            pilots=[
                PilotStatus(
                    pilot_id=row.pilot_id,
                    last_seen=iso(row.last_seen),
                    last_heartbeat=None if row.last_heartbeat is None else iso(row.last_heartbeat),
                    bundle_id=row.bundle_id,
                    progress=None if row.progress is None else Progress.model_validate_json(row.progress),
                )
                for row in rows
            ],
        )


ROW_COLUMNS = (
    bundles.c.bundle_id,
    bundles.c.path,
    bundles.c.n_quanta,
    bundles.c.cores,
    bundles.c.memory_mb,
    bundles.c.est_seconds,
    bundles.c.root,
    bundles.c.generation,
    bundles.c.attempts,
    bundles.c.disk_mb,
    bundles.c.workflow_id,
    bundles.c.label,
)


def bundle_row(row: sa.RowMapping) -> BundleRow:
    """The `BundleRow` in a result row that selected `ROW_COLUMNS` (and maybe more)."""
    return BundleRow(**{column.name: row[column] for column in ROW_COLUMNS})


# Built once, as the statements of `pilot.scheduler.statements` (it needs ROW_COLUMNS).
_LEASE_VIEW = (
    sa.select(leases.c.state, leases.c.result, *ROW_COLUMNS)
    .join(bundles, bundles.c.bundle_id == leases.c.bundle_id)
    .where(leases.c.lease_id == sa.bindparam("lease_id"))
)
