"""Workflows in the queue database: submitted over the protocol, read back per job, cancelled.

A workflow is a set of bundles submitted together (by ``pilot.bps.PilotService``, one
bundle per BPS job).  A *job* is an original bundle with the remainders that re-ran its
quanta (same ``root``); its state is its latest bundle's.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import sqlalchemy as sa

from ..protocol import JobStatus, WorkflowStatus, WorkflowSubmit
from .errors import RequestError
from .store import ROW_COLUMNS, BundleRow, QueueStore, bundle_row, iso
from .tables import bundles, leases, pilots, workflows

_INFO_FIELDS = ("submit_path", "operator", "project", "campaign", "payload", "excluded")


class UnknownWorkflow(RequestError):
    status = 404


@dataclasses.dataclass(frozen=True)
class Job:
    """A job's latest bundle, and what the queue knows of it."""

    latest: BundleRow
    state: str
    quanta: int
    failed_quanta: int
    exit_code: int | None
    staged: bool


class WorkflowBook:
    """The workflow side of ``store``."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store

    def add(self, submit: WorkflowSubmit, rows: list[tuple[BundleRow, list[str]]], now: float) -> int:
        """Record the workflow (once) and queue its bundles; return how many were new."""
        info = json.dumps({name: getattr(submit, name) for name in _INFO_FIELDS})
        with self.store.tx() as conn:
            known = conn.execute(
                sa.select(workflows.c.run).where(workflows.c.workflow_id == submit.workflow_id)
            ).first()
            if known is None:
                seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(workflows.c.seq), 0))).scalar_one()
                conn.execute(
                    workflows.insert().values(
                        workflow_id=submit.workflow_id,
                        seq=seq + 1,
                        run=submit.run,
                        cancelled=False,
                        submitted_at=now,
                        info=info,
                    )
                )
            elif known.run != submit.run:
                raise RequestError(f"workflow {submit.workflow_id} exists with run {known.run}")
            return sum(self.store.insert_bundle(conn, row, depends) for row, depends in rows)

    def ids(self) -> list[str]:
        with self.store.connect() as conn:
            query = sa.select(workflows.c.workflow_id).order_by(workflows.c.seq)
            return list(conn.execute(query).scalars())

    def jobs(self, workflow_id: str) -> list[Job]:
        """Every job of the workflow, in queue order."""
        b = bundles
        waiting = self.store.waiting(b).label("is_waiting")
        query = (
            sa.select(*ROW_COLUMNS, b.c.state, b.c.exit_code, b.c.failed_quanta, b.c.staged, waiting)
            .where(b.c.workflow_id == workflow_id)
            .order_by(b.c.seq)
        )
        latest: dict[str, Any] = {}
        originals: dict[str, int] = {}
        with self.store.connect() as conn:
            for row in conn.execute(query):
                if row.generation == 0:
                    originals[row.root] = row.n_quanta
                if row.root not in latest or row.generation > latest[row.root].generation:
                    latest[row.root] = row
        jobs = []
        for root, row in latest.items():
            state = "waiting" if row.state == "queued" and row.is_waiting else row.state
            jobs.append(
                Job(
                    latest=bundle_row(row._mapping),
                    state=state,
                    quanta=originals.get(root, row.n_quanta),
                    failed_quanta=row.failed_quanta or 0,
                    exit_code=row.exit_code,
                    staged=bool(row.staged),
                )
            )
        return jobs

    def status(self, workflow_id: str, message: str | None = None) -> WorkflowStatus:
        """The workflow with its jobs and its ingest counts."""
        with self.store.connect() as conn:
            row = conn.execute(sa.select(workflows).where(workflows.c.workflow_id == workflow_id)).first()
            if row is None:
                raise UnknownWorkflow(f"no workflow {workflow_id}")
            ingest: dict[str, int] = dict(
                conn.execute(
                    sa.select(bundles.c.ingest, sa.func.count())
                    .where(bundles.c.workflow_id == workflow_id, bundles.c.ingest != "none")
                    .group_by(bundles.c.ingest)
                ).all()
            )
        jobs = [
            JobStatus(
                job_id=job.latest.root,
                label=job.latest.label or job.latest.root,
                state=job.state,  # type: ignore[arg-type]
                bundle_id=job.latest.bundle_id,
                attempts=job.latest.attempts,
                quanta=job.quanta,
                failed_quanta=job.failed_quanta if job.state == "failed" else 0,
                exit_code=job.exit_code if job.state == "failed" else None,
            )
            for job in self.jobs(workflow_id)
        ]
        counts = {state: int(ingest.get(state, 0)) for state in ("pending", "done", "failed")}
        return WorkflowStatus(
            workflow_id=workflow_id,
            run=row.run,
            state=_overall(bool(row.cancelled), jobs, counts),
            submitted_at=iso(row.submitted_at),
            jobs=jobs,
            ingest=counts,
            message=message,
            **json.loads(row.info),
        )

    def cancel(self, workflow_id: str) -> tuple[int, int]:
        """Cancel every queued or running bundle; return ``(queued, running)`` cancelled.

        A running bundle's lease ends as ``cancelled``: its pilot's next heartbeat gets 410
        and stops the bundle, and its report is refused, so nothing of it is ingested.
        """
        b = bundles
        with self.store.tx() as conn:
            if (
                conn.execute(
                    workflows.update().where(workflows.c.workflow_id == workflow_id).values(cancelled=True)
                ).rowcount
                != 1
            ):
                raise UnknownWorkflow(f"no workflow {workflow_id}")
            running = list(
                conn.execute(
                    sa.select(b.c.lease_id).where(b.c.workflow_id == workflow_id, b.c.state == "running")
                ).scalars()
            )
            conn.execute(
                leases.update()
                .where(leases.c.lease_id.in_(running), leases.c.state == "active")
                .values(state="cancelled")
            )
            conn.execute(pilots.update().where(pilots.c.lease_id.in_(running)).values(lease_id=None))
            queued = conn.execute(
                b.update()
                .where(b.c.workflow_id == workflow_id, b.c.state == "queued")
                .values(state="cancelled")
            ).rowcount
            conn.execute(
                b.update()
                .where(b.c.workflow_id == workflow_id, b.c.state == "running")
                .values(state="cancelled", lease_id=None)
            )
        return queued, len(running)

    def requeue(self, workflow_id: str, retries: list[tuple[BundleRow, BundleRow, bool]]) -> None:
        """Queue ``(latest, remainder, latest staged)`` of jobs restarted together; un-cancel.

        A remainder waits for what its job's latest bundle waited for, reads from that bundle
        if it was staged, and waits for the remainders of restarted upstream jobs, so a
        restarted downstream job never runs before the quanta it needs are redone.
        """
        new_of_root = {latest.root: rest.bundle_id for latest, rest, _ in retries}
        with self.store.tx() as conn:
            conn.execute(
                workflows.update().where(workflows.c.workflow_id == workflow_id).values(cancelled=False)
            )
            for latest, rest, staged in retries:
                inherited = self.store.deps_of(conn, latest.bundle_id)
                roots = conn.execute(
                    sa.select(bundles.c.root).where(bundles.c.bundle_id.in_(inherited))
                ).scalars()
                upstream_redone = [new_of_root[r] for r in roots if r in new_of_root and r != latest.root]
                depends = inherited + ([latest.bundle_id] if staged else []) + upstream_redone
                self.store.insert_bundle(conn, rest, depends)
                conn.execute(
                    bundles.update()
                    .where(bundles.c.bundle_id == latest.bundle_id)
                    .values(remainder=rest.bundle_id)
                )


def _overall(cancelled: bool, jobs: list[JobStatus], ingest: dict[str, int]) -> Any:
    if cancelled:
        return "cancelled"
    if ingest["pending"] or any(job.state in ("waiting", "queued", "running") for job in jobs):
        return "running"
    if ingest["failed"] or any(job.state in ("failed", "cancelled") for job in jobs):
        return "failed"
    return "succeeded"
