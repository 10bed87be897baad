"""The scheduler's operations: claim, heartbeat, report/release and lease expiry.

This joins the queue store with the bundle files and the staging area: it decides what
a finished or lapsed lease leaves behind (a remainder bundle, an ingest) and lets the
store apply it in one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Literal

from lsst.resources import ResourcePath

from ..bundle_model import Bundle, load_bundle
from ..errors import PilotError
from ..monitor.campaign import CampaignBuilder, PendingState, committed_report
from ..protocol import (
    CampaignReport,
    ClaimRequest,
    ClaimResponse,
    FinishResponse,
    Heartbeat,
    HeartbeatResponse,
    Lease,
    Release,
    Report,
    StatusResponse,
    WorkflowList,
    WorkflowStatus,
    WorkflowSubmit,
)
from ..qgraph_io import task_labels
from ..report import BundleReport
from ..staging import area
from .errors import LeaseGone, RequestError
from .fit import estimated_seconds
from .outcome import CommittedOutcome, committed_outcome, is_committed
from .remainder import make_remainder, remainder_id, write_remainder
from .retry_policy import decide
from .store import BundleRow, FinishPlan, QueueStore, iso
from .workflows import WorkflowBook

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Ended:
    """How a lease ended: the quanta it accounts for and what was committed."""

    succeeded: set[uuid.UUID]
    failed: set[uuid.UUID]
    staged: bool  # a manifest is committed
    outcome: CommittedOutcome | None  # its report, when readable
    kind: Literal["report", "release", "expiry"]
    exit_code: int | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Knobs of ``pilot serve``."""

    lease_ttl: float = 120.0
    seconds_per_quantum: float = 10.0
    max_attempts: int = 3
    retry_after: float = 10.0
    staging: str | None = None  # the staging area as the scheduler sees it; default the bundle's


class Scheduler:
    """Hands bundles of ``store`` to pilots; writes remainder bundles into ``remainder_dir``."""

    def __init__(self, store: QueueStore, remainder_dir: ResourcePath, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._remainder_dir = remainder_dir
        self._bundles: dict[str, Bundle] = {}
        self._qgraph_uris: dict[str, str] = {}  # bundle file: its graph's absolute URI
        self._sweeping = threading.Lock()
        self.workflows = WorkflowBook(store)
        self._labels: dict[str, dict[uuid.UUID, str]] = {}  # quantum graph URI: its task labels
        self._reports: dict[str, tuple[BundleReport, str] | None] = {}  # finished bundle: its report
        self.on_staged: list[Callable[[str], None]] = []  # called with each newly staged bundle

    def bundle(self, path: str) -> Bundle:
        """Read a bundle file once (bundle files never change)."""
        if (bundle := self._bundles.get(path)) is None:
            bundle = self._bundles[path] = load_bundle(path)
        return bundle

    def _qgraph_of(self, path: str) -> str:
        """The absolute URI of the quantum graph of the bundle file at ``path`` (resolved once:
        resolving a relative URI asks the filesystem, and claims come a hundred a second)."""
        if (uri := self._qgraph_uris.get(path)) is None:
            uri = self._qgraph_uris[path] = str(self.bundle(path).qgraph_uri(ResourcePath(path)))
        return uri

    def row_for(self, bundle: Bundle, path: str) -> BundleRow:
        """Describe an original (not a remainder) bundle for the store."""
        return BundleRow(
            bundle_id=bundle.bundle_id,
            path=path,
            n_quanta=len(bundle.quantum_ids),
            cores=bundle.resources.cores,
            memory_mb=bundle.resources.memory_mb,
            disk_mb=bundle.resources.disk_mb,
            est_seconds=estimated_seconds(bundle, self.settings.seconds_per_quantum),
            root=bundle.bundle_id,
        )

    def staging_dir(self, bundle_id: str) -> ResourcePath:
        """Return ``<staging>/<bundle_id>/`` as the scheduler reaches it."""
        if self.settings.staging is not None:
            root = ResourcePath(self.settings.staging, forceDirectory=True)
        else:
            dbb = self.bundle(self.store.bundle_row(bundle_id).path).dbb
            root = area.staging_root(dbb.repo, dbb.staging)
        return area.bundle_dir(root, bundle_id)

    def claim(self, request: ClaimRequest) -> ClaimResponse:
        now = time.time()
        claimed = self.store.claim(
            request.pilot_id, request.slot, now, self.settings.lease_ttl, request.claim_key
        )
        if claimed is None:
            return ClaimResponse(no_work=True, retry_after_s=self.settings.retry_after)
        document = self.bundle(claimed.path).model_copy(
            update={"qgraph": self._qgraph_of(claimed.path), "depends_on": claimed.upstream}
        )
        _LOG.info("Pilot %s claimed bundle %s.", request.pilot_id, claimed.bundle_id)
        return ClaimResponse(
            bundle=document.model_dump(mode="json"),
            lease=Lease(
                lease_id=claimed.lease_id, expires_at=iso(claimed.expires_at), ttl_s=self.settings.lease_ttl
            ),
        )

    def heartbeat(self, lease_id: str, beat: Heartbeat) -> HeartbeatResponse:
        now = time.time()
        progress = beat.model_dump_json(exclude={"finished_quantum_ids"})  # a `Progress`
        expires = self.store.heartbeat(lease_id, progress, now, self.settings.lease_ttl)
        return HeartbeatResponse(expires_at=iso(expires), ttl_s=self.settings.lease_ttl)

    def finish(
        self, lease_id: str, message: Report | Release, kind: Literal["report", "release"]
    ) -> FinishResponse:
        """Apply a final report or a release; a repeat gets the first answer."""
        now = time.time()
        view = self.store.lease_view(lease_id)
        if view.state == "finished" and view.result is not None:
            return view.result
        if view.state != "active":
            raise LeaseGone(f"lease {lease_id} expired: its quanta were re-queued")
        bundle = self.bundle(view.bundle.path)
        succeeded, failed = set(message.succeeded_quantum_ids), set(message.failed_quantum_ids)
        unknown = (succeeded | failed) - set(bundle.quantum_ids)
        if unknown:
            raise RequestError(f"quantum {min(map(str, unknown))} is not in bundle {bundle.bundle_id}")
        if succeeded & failed:
            raise RequestError(f"quantum {min(map(str, succeeded & failed))} is both succeeded and failed")
        outcome, staged = None, False
        if message.staged:
            # One read of the manifest and report in the usual case; a manifest whose report
            # cannot be read still counts as staged (it is ingested), with no outcome to go by.
            directory = self.staging_dir(bundle.bundle_id)
            outcome = committed_outcome(directory)
            staged = outcome is not None or is_committed(directory)
            if not staged:
                _LOG.warning("Bundle %s reported staged, but no manifest is committed.", bundle.bundle_id)
        exit_code = message.exit_code if isinstance(message, Report) else None
        end = _Ended(succeeded, failed, staged, outcome, kind, exit_code)
        plan = self._plan(view.bundle, bundle, end, now, lease_id)
        result = self.store.finish(plan)
        assert result is not None
        self._after(plan, result)
        return result

    def expire_due(self, now: float) -> None:
        """Expire every lapsed lease: its unfinished quanta go back to the queue.

        Called by the leading replica's sweeper thread, never on a request's path.
        """
        if not self._sweeping.acquire(blocking=False):
            return  # another thread is sweeping
        try:
            for lease_id, bundle_id in self.store.due_leases(now):
                row = self.store.bundle_row(bundle_id)
                bundle = self.bundle(row.path)
                outcome = committed_outcome(self.staging_dir(bundle_id))
                succeeded = set(outcome.succeeded) if outcome else set()
                failed = set(outcome.failed) if outcome else set()
                plan = self._plan(
                    row,
                    bundle,
                    _Ended(succeeded, failed, outcome is not None, outcome, "expiry"),
                    now,
                    lease_id,
                )
                result = self.store.finish(plan)
                if result is not None:
                    _LOG.warning(
                        "Lease %s on bundle %s lapsed: %d quanta re-queued as %s.",
                        lease_id,
                        bundle_id,
                        result.requeued_quanta,
                        result.remainder_bundle_id,
                    )
                    self._after(plan, result)
        finally:
            self._sweeping.release()

    def status(self) -> StatusResponse:
        return self.store.status()

    def report(self) -> CampaignReport:
        """The campaign per task label: committed reports of finished bundles, quanta of the others."""
        builder = CampaignBuilder("pilot serve")
        for bundle_id, path, state in self.store.bundle_states():
            if state in ("queued", "running"):
                bundle = self.bundle(path)
                labels = self._task_labels(bundle.qgraph_uri(ResourcePath(path)))
                pending: PendingState = "queued" if state == "queued" else "running"
                builder.add_pending(bundle_id, pending, {q: labels[q] for q in bundle.quantum_ids})
            elif (found := self._finished_report(bundle_id)) is not None:
                builder.add_report(*found)
        return builder.build()

    def staged_bytes(self) -> tuple[int, int]:
        """``(files, bytes)`` staged out by the finished bundles whose committed reports `report` read."""
        records = [found[0].stage_out for found in self._reports.values() if found is not None]
        return (
            sum(r.transfer.files for r in records if r is not None),
            sum(r.transfer.bytes for r in records if r is not None),
        )

    def _task_labels(self, qgraph: ResourcePath) -> dict[uuid.UUID, str]:
        if (labels := self._labels.get(str(qgraph))) is None:
            labels = self._labels[str(qgraph)] = task_labels(qgraph)
        return labels

    def _finished_report(self, bundle_id: str) -> tuple[BundleReport, str] | None:
        """A finished bundle's committed report and commit time (read once: it no longer changes)."""
        if bundle_id not in self._reports:
            directory = self.staging_dir(bundle_id)
            try:
                manifest = area.committed_manifest(directory)
                found = (
                    None
                    if manifest is None
                    else (committed_report(directory, manifest), manifest.committed_at)
                )
            except Exception as err:  # unreadable: not counted, and tried again next time
                _LOG.warning("Cannot read the committed report in %s: %s", directory, err)
                return None
            self._reports[bundle_id] = found
        return self._reports[bundle_id]

    def _plan(self, row: BundleRow, bundle: Bundle, end: _Ended, now: float, lease_id: str) -> FinishPlan:
        unfinished = {q for q in bundle.quantum_ids if q not in end.succeeded and q not in end.failed}
        counted = end.kind != "release"  # a drain is not the bundle's fault (retry_policy, rule 1)
        attempts = row.attempts + (1 if counted else 0)
        tries_left = attempts < (bundle.retries.max_attempts or self.settings.max_attempts)
        causes = end.outcome.causes if end.outcome else {}
        decision = decide(bundle.retries, end.failed, causes, counted=counted, tries_left=tries_left)
        requeued = (
            [q for q in bundle.quantum_ids if q in decision.retried or q in unfinished] if tries_left else []
        )
        abandoned = 0 if tries_left else len(unfinished)
        left_failed = len(end.failed) - len(decision.retried)
        remainder = None
        if requeued:
            remainder = self._remainder(row, bundle, requeued, end.staged, attempts, decision.memory_factor)
        result = FinishResponse(
            bundle_id=bundle.bundle_id,
            state="failed" if left_failed or abandoned else "done",
            remainder_bundle_id=None if remainder is None else remainder.bundle_id,
            requeued_quanta=len(requeued),
            abandoned_quanta=abandoned,
            failed_quanta=left_failed,
            ingest="queued" if end.staged else "not_staged",
        )
        return FinishPlan(
            lease_id, bundle.bundle_id, end.kind, now, end.staged, result, remainder, end.exit_code
        )

    def _remainder(
        self,
        row: BundleRow,
        bundle: Bundle,
        quanta: list[uuid.UUID],
        staged: bool,
        attempts: int = 0,
        memory_factor: float = 1.0,
    ) -> BundleRow:
        """Write the next remainder of ``row``'s job, holding ``quanta``; return its queue row."""
        new_id = remainder_id(row.root, row.generation + 1)
        rest = make_remainder(bundle, ResourcePath(row.path), new_id, quanta, staged, memory_factor)
        path = str(write_remainder(rest, self._remainder_dir))
        self._bundles[path] = rest
        return dataclasses.replace(
            self.row_for(rest, path),
            root=row.root,
            generation=row.generation + 1,
            attempts=attempts,
            workflow_id=row.workflow_id,
            label=row.label,
        )

    def _after(self, plan: FinishPlan, result: FinishResponse) -> None:
        if plan.staged:
            for callback in self.on_staged:
                callback(plan.bundle_id)

    # Workflows (``/v1/workflows``): submitted by the BPS plugin, one bundle per job.

    def submit_workflow(self, submit: WorkflowSubmit) -> WorkflowStatus:
        """Queue a workflow's bundle files (a repeat queues nothing new)."""
        rows = []
        for item in submit.bundles:
            try:
                bundle = self.bundle(item.path)
            except PilotError as err:
                raise RequestError(str(err)) from None
            row = dataclasses.replace(
                self.row_for(bundle, item.path), workflow_id=submit.workflow_id, label=item.label
            )
            rows.append((row, bundle.depends_on))
        added = self.workflows.add(submit, rows, time.time())
        _LOG.info("Workflow %s: %d new bundles queued.", submit.workflow_id, added)
        return self.workflows.status(submit.workflow_id, f"{added} bundles queued")

    def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        return self.workflows.status(workflow_id)

    def workflow_list(self) -> WorkflowList:
        return WorkflowList(workflows=[self.workflows.status(w) for w in self.workflows.ids()])

    def cancel_workflow(self, workflow_id: str) -> WorkflowStatus:
        queued, running = self.workflows.cancel(workflow_id)
        _LOG.warning("Workflow %s cancelled: %d queued and %d running bundles.", workflow_id, queued, running)
        return self.workflows.status(workflow_id, f"cancelled {queued} queued and {running} running bundles")

    def restart_workflow(self, workflow_id: str) -> WorkflowStatus:
        """Re-queue what did not succeed in the failed and cancelled jobs; run nothing twice."""
        retries = []
        for job in self.workflows.jobs(workflow_id):
            if job.state not in ("failed", "cancelled"):
                continue
            row, bundle = job.latest, self.bundle(job.latest.path)
            # A cancelled bundle's report was refused: its commit (if any) is never ingested.
            staged = job.staged and job.state == "failed"
            outcome = committed_outcome(self.staging_dir(row.bundle_id)) if staged else None
            done = outcome.succeeded if outcome else frozenset()
            redo = [q for q in bundle.quantum_ids if q not in done]
            retries.append(
                (row, self._remainder(row, bundle, redo, outcome is not None), outcome is not None)
            )
        self.workflows.requeue(workflow_id, retries)
        quanta = sum(rest.n_quanta for _, rest, _ in retries)
        _LOG.info("Workflow %s restarted: %d jobs, %d quanta re-queued.", workflow_id, len(retries), quanta)
        return self.workflows.status(workflow_id, f"restarted {len(retries)} jobs: {quanta} quanta re-queued")
