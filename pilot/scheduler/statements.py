"""The SQL of the requests pilots send most (claim, heartbeat, report), built once.

A thousand pilots send a few hundred of these a second, and building an SQLAlchemy
statement and its cache key costs more Python time than the database takes to run it.
So each is built once per shape, with bound parameters for every value: SQLAlchemy then
finds its compiled form by the statement's memoized cache key, and a request pays for
little more than the parameters and the round trip.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..protocol import Slot
from .tables import bundles, deps, leases, pilots

FINISHED = ("done", "failed")


class SlotShape(NamedTuple):
    """Which of a slot's optional limits are known: each known one is a condition of the claim."""

    memory: bool
    disk: bool
    walltime: bool


def slot_shape(slot: Slot) -> SlotShape:
    return SlotShape(slot.memory_mb is not None, slot.disk_mb is not None, slot.walltime_left_s is not None)


def slot_params(slot: Slot) -> dict[str, Any]:
    """The bound values of `take` for ``slot``."""
    return {
        "slot_cores": slot.cores,
        "slot_memory_mb": slot.memory_mb,
        "slot_disk_mb": slot.disk_mb,
        "slot_walltime": slot.walltime_left_s,
    }


def fits(b: sa.FromClause, shape: SlotShape) -> list[sa.ColumnElement[bool]]:
    """The conditions a row of bundles ``b`` meets to fit a slot of ``shape`` (`slot_params`).

    Cores always; memory, disk and the wall-time estimate only where both the bundle
    and the slot give them (unknown on either side is no constraint).
    """
    conditions: list[sa.ColumnElement[bool]] = [b.c.cores <= sa.bindparam("slot_cores")]
    if shape.memory:
        conditions.append(sa.or_(b.c.memory_mb.is_(None), b.c.memory_mb <= sa.bindparam("slot_memory_mb")))
    if shape.disk:
        conditions.append(sa.or_(b.c.disk_mb.is_(None), b.c.disk_mb <= sa.bindparam("slot_disk_mb")))
    if shape.walltime:
        conditions.append(b.c.est_seconds <= sa.bindparam("slot_walltime"))
    return conditions


def waiting(b: sa.FromClause) -> sa.ColumnElement[bool]:
    """True for a bundle of ``b`` with an upstream bundle not finished (or not known)."""
    u = bundles.alias("u")
    finished = sa.exists().where(u.c.bundle_id == deps.c.dep_id, u.c.state.in_(FINISHED))
    return sa.exists().where(deps.c.bundle_id == b.c.bundle_id, ~finished)


@functools.cache
def take(shape: SlotShape) -> sa.Update:
    """Pick the oldest queued, ready bundle that fits, and lease it (``lease_id``), in one statement.

    On PostgreSQL the pick skips rows other claims have locked (``FOR UPDATE SKIP
    LOCKED``); sqlite has no row locks and ignores it (its writers are serialized).
    """
    q = bundles.alias("pick")
    pick = (
        sa.select(q.c.bundle_id)
        .where(q.c.state == "queued", *fits(q, shape), ~waiting(q))
        .order_by(q.c.seq)
        .limit(1)
        .with_for_update(skip_locked=True, of=q)
    )
    return (
        bundles.update()
        .where(bundles.c.bundle_id == pick.scalar_subquery(), bundles.c.state == "queued")
        .values(state="running", lease_id=sa.bindparam("new_lease_id"))
        .returning(bundles.c.bundle_id, bundles.c.path)
    )


CLAIMED_WITH = (
    sa.select(leases.c.lease_id, leases.c.bundle_id, leases.c.expires_at, bundles.c.path)
    .join(bundles, bundles.c.bundle_id == leases.c.bundle_id)
    .where(leases.c.pilot_id == sa.bindparam("pilot_id"), leases.c.claim_key == sa.bindparam("claim_key"))
)

CLAIM_KEY_LOCK = sa.select(
    sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("pilot_and_key", type_=sa.Text), 0))
)

INSERT_LEASE = leases.insert()

UPSTREAM = (
    sa.select(deps.c.dep_id)
    .join(bundles, bundles.c.bundle_id == deps.c.dep_id)
    .where(deps.c.bundle_id == sa.bindparam("bundle_id"), bundles.c.staged)
    .order_by(bundles.c.seq)
)

EXTEND = (
    leases.update()
    .where(leases.c.lease_id == sa.bindparam("the_lease"), leases.c.state == "active")
    .values(expires_at=sa.bindparam("new_expiry"), progress=sa.bindparam("new_progress"))
    .returning(leases.c.pilot_id)
)


def insert_for(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` into ``table`` in ``dialect``'s own form (it has ``on_conflict_do_*``)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@functools.cache
def seen(dialect: str, heartbeat: bool, leased: bool) -> sa.Insert:
    """Upsert the pilot's row: ``last_seen`` (and ``last_heartbeat``, its ``lease_id``)."""
    columns = ["last_seen", *(["last_heartbeat"] if heartbeat else []), *(["lease_id"] if leased else [])]
    insert = insert_for(dialect, pilots)
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}") for name in ["pilot_id", *columns]}
    return insert.values(values).on_conflict_do_update(
        index_elements=[pilots.c.pilot_id], set_={name: insert.excluded[name] for name in columns}
    )


@functools.cache
def end_lease(expiry: bool) -> sa.Update:
    """End an active lease (``the_lease``) as ``new_state`` with ``new_result``; an expiry only if due.

    (Bound names differ from column names: SQLAlchemy reserves those in an UPDATE.)
    """
    ending = [leases.c.lease_id == sa.bindparam("the_lease"), leases.c.state == "active"]
    if expiry:
        ending.append(leases.c.expires_at < sa.bindparam("now"))  # not if a heartbeat just extended it
    return (
        leases.update()
        .where(*ending)
        .values(state=sa.bindparam("new_state"), result=sa.bindparam("new_result"))
    )


_ENDED = ("state", "remainder", "staged", "ingest", "finished_at", "exit_code", "failed_quanta")

END_BUNDLE = (
    bundles.update()
    .where(bundles.c.bundle_id == sa.bindparam("b_bundle_id"))
    .values({name: sa.bindparam(f"b_{name}") for name in _ENDED} | {"lease_id": None})
)

FREE_PILOT = pilots.update().where(pilots.c.lease_id == sa.bindparam("the_lease")).values(lease_id=None)
