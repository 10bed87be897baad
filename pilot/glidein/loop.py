"""``pilot start``: the pilot's life in a glidein — claim, run, report, until drained.

The loop claims a bundle that fits the slot (cores, memory, disk, walltime left),
runs it with the same `run_bundle` as ``pilot run`` on one warm worker pool, and
reports it; a separate thread keeps the lease alive with progress heartbeats.  It
ends when the scheduler has had no work for ``idle_timeout`` seconds (exit 0), at
the slot's end of life, or on SIGTERM/SIGINT/SIGUSR1: then it stops claiming, gives
running quanta ``grace`` seconds, stages what finished, releases the rest to the
scheduler, and exits DRAINED.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lsst.resources import ResourcePath

from ..bundle_model import Bundle, ExecutionSpec, write_bundle
from ..errors import BundleError, PilotError
from ..executor.watchdog import TIMEOUT
from ..executor.worker_pool import WorkerPool
from ..exit_codes import ExitCode
from ..interruption import StopRequest
from ..monitor.progress import Tracker
from ..protocol import Heartbeat, Lease, Release, Report
from ..protocol import Slot as SlotMessage
from ..report import BundleReport, QuantumResult
from ..runner import run_bundle
from ..slot import Slot, parse_size
from .client import LeaseGone, SchedulerClient

_LOG = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LEASE_LOST = "the scheduler withdrew the lease"
MAX_CONSECUTIVE_ERRORS = 3


@dataclasses.dataclass(frozen=True)
class StartOptions:
    """How ``pilot start`` behaves."""

    area: Path
    pilot_id: str
    grace: float = 60.0
    idle_timeout: float = 600.0
    reserve_seconds: float = 120.0
    """Walltime kept back from each claim for drain and stage-out."""
    keep_workspaces: bool = False
    processes: int | None = None
    """``--processes``: workers for every bundle, whatever it asks (at most the slot's cores)."""
    memory_per_worker: str | None = None
    """``--memory-per-worker``: RSS budget of each worker for every bundle, whatever it asks."""


@dataclasses.dataclass
class PilotSummary:
    """What one pilot did, for its last log lines and its exit code."""

    bundles: int = 0
    quanta_succeeded: int = 0
    quanta_failed: int = 0
    exit_code: ExitCode = ExitCode.SUCCESS
    reason: str = ""


def default_pilot_id() -> str:
    """Host, process and a random suffix: unique across glideins and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Progress:
    """Quanta of the running bundle, for heartbeats (updated from the run's callback).

    ``running`` counts the quanta handed to a worker and not finished (the pool knows);
    in the pilot's own process (``--processes 0``) it is not known and sent as 0.
    """

    def __init__(self, running: Callable[[], int], bundle_id: str = "") -> None:
        self._lock = threading.Lock()
        self._running = running
        self.tracker = Tracker(bundle_id, running)  # the line logged at each heartbeat
        self.done: list[uuid.UUID] = []
        self.failed = 0
        self.timed_out: list[str] = []

    def add(self, result: QuantumResult) -> None:
        self.tracker.add(result)
        with self._lock:
            if result.status == "succeeded":
                self.done.append(result.quantum_id)
            else:
                self.failed += 1
                if result.exception_type == TIMEOUT:
                    self.timed_out.append(_timed_out(result))

    def add_retry(self, result: QuantumResult) -> None:
        """A failed attempt that runs again: only a time-out or hang is worth a heartbeat's word."""
        if result.exception_type == TIMEOUT:
            with self._lock:
                self.timed_out.append(_timed_out(result) + " (retrying)")

    def heartbeat(self) -> Heartbeat:
        with self._lock:
            return Heartbeat(
                quanta_done=len(self.done),
                quanta_failed=self.failed,
                quanta_running=self._running(),
                timed_out=list(self.timed_out),
                finished_quantum_ids=list(self.done),
            )


def _timed_out(result: QuantumResult) -> str:
    """How a heartbeat names a quantum failed by its time limit or as hung."""
    return f"{result.task_label} {result.data_id}: {result.exception_message}"


class _Heartbeats(threading.Thread):
    """Extends one lease every ``ttl / 3`` seconds until stopped; asks the run to stop if it is lost."""

    def __init__(
        self,
        client: SchedulerClient,
        lease_id: str,
        ttl: float,
        progress: _Progress,
        stop: StopRequest,
        end_of_life: Callable[[], bool],
    ) -> None:
        super().__init__(name=f"heartbeat-{lease_id}", daemon=True)
        self.client, self.lease_id, self.progress, self.stop_run = client, lease_id, progress, stop
        self.end_of_life = end_of_life
        self.interval = max(0.5, min(ttl / 3, 10.0))
        self.finished = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.finished.wait(self.interval):
            if self.end_of_life():
                self.stop_run.request("the slot reaches its end of life")
            try:
                self.client.heartbeat(self.lease_id, self.progress.heartbeat())
                _LOG.info("Progress: %s", self.progress.tracker.line())
            except LeaseGone as err:
                _LOG.warning("Lease %s is gone (%s); stopping its bundle.", self.lease_id, err)
                self.lost = True
                self.stop_run.request(LEASE_LOST)
                return
            except PilotError as err:  # unreachable for now: the lease may still be saved
                _LOG.warning("Heartbeat for lease %s failed: %s", self.lease_id, err)

    def close(self) -> None:
        self.finished.set()
        self.join()


@dataclasses.dataclass(frozen=True)
class _Claimed:
    """A bundle the scheduler leased to this pilot, written to the pilot's bundle directory."""

    bundle: Bundle
    path: Path
    lease: Lease


@dataclasses.dataclass(frozen=True)
class _Ran:
    """How running a claimed bundle ended."""

    report: BundleReport | None
    failure: PilotError | None
    """Set when the bundle stopped before executing (bad bundle, stage-in failure)."""
    lease_lost: bool


def start_pool_size(slot: Slot, processes: int | None) -> int:
    """Workers ``pilot start`` begins with: ``processes`` (0: none) else the slot's cores, at most those."""
    if processes == 0:
        return 0
    return min(processes if processes is not None else slot.cores, slot.cores)


def pool_settings(
    execution: ExecutionSpec, cores: int, processes: int | None, memory_per_worker: str | None
) -> tuple[int, int | None]:
    """Return ``(workers, memory limit in bytes or None)`` for a bundle on a pool of worker processes.

    Workers: ``processes`` (the command line) if given, else the bundle's
    ``execution.processes``, else ``cores``; never more than ``cores``, and 1 for a
    bundle asking for 0 (in the pilot's process): the pilot does not run quanta in its
    own process next to its pool.  The memory budget: ``memory_per_worker`` if given,
    else the bundle's, else none.

    Raises
    ------
    BundleError
        The memory budget is not a size.
    """
    wanted = processes if processes is not None else execution.processes
    workers = cores if wanted is None else min(wanted, cores)
    if wanted is not None and wanted > cores:
        _LOG.warning("%d worker processes asked for; the slot has %d cores: using %d.", wanted, cores, cores)
    if workers == 0:
        _LOG.warning("The bundle asks for 0 processes (in the pilot's process); running it on 1 worker.")
        workers = 1
    budget = memory_per_worker or execution.memory_per_worker
    try:
        return workers, parse_size(budget) if budget else None
    except ValueError as err:
        raise BundleError(f"memory_per_worker: {err}") from None


def start_pilot(
    client: SchedulerClient, slot: Slot, pool: WorkerPool | None, options: StartOptions, stop: StopRequest
) -> PilotSummary:
    """Claim and run bundles until idle, end of life or a drain signal; return what happened.

    ``stop`` is the `StopRequest` the drain signals set (see `DRAIN_SIGNALS`).  Each
    bundle runs on ``pool`` resized to the bundle's settings (see `pool_settings`);
    without a pool (``--processes 0``) every bundle runs in this process.

    Raises
    ------
    PilotError
        The scheduler refused the token, stayed unreachable, or bundles kept failing
        before execution (the same error three times in a row).
    """
    return _Pilot(client, slot, pool, options, stop).run()


class _Pilot:
    """The claim–run–report loop of `start_pilot`, one step per method."""

    def __init__(
        self,
        client: SchedulerClient,
        slot: Slot,
        pool: WorkerPool | None,
        options: StartOptions,
        stop: StopRequest,
    ) -> None:
        self.client, self.slot, self.pool, self.options, self.stop = client, slot, pool, options, stop
        self.summary = PilotSummary()
        self.bundles_dir = options.area / "bundles"
        self.idle_since = time.monotonic()
        self.errors_in_a_row = 0

    def run(self) -> PilotSummary:
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        while not self.summary.reason:
            claimed = self._claim()
            if claimed is not None:
                self._work_on(claimed)
        return self.summary

    def _claim(self) -> _Claimed | None:
        """Claim a bundle; None when there is none (after waiting), or the pilot must end (reason set)."""
        if self.stop.reason is not None:
            _drained(self.summary, self.stop.reason)
            return None
        left = self.slot.walltime_left()
        if left is not None and left <= self.options.reserve_seconds:
            self.summary.reason = f"end of life: {left:.0f} s of walltime left"
            return None
        answer = self.client.claim(self.options.pilot_id, _slot_message(self.slot, left, self.options))
        if answer.bundle is None or answer.lease is None:
            idle = time.monotonic() - self.idle_since
            if idle >= self.options.idle_timeout:
                self.summary.reason = f"no work for {idle:.0f} s"
            else:
                _sleep(min(answer.retry_after_s or 10.0, self.options.idle_timeout - idle), self.stop)
            return None
        bundle = Bundle.model_validate(answer.bundle)
        path = self.bundles_dir / f"{bundle.bundle_id}.json"
        write_bundle(bundle, ResourcePath(path))
        _LOG.warning(
            "Claimed bundle %s (%d quanta), lease %s.",
            bundle.bundle_id,
            len(bundle.quantum_ids),
            answer.lease.lease_id,
        )
        return _Claimed(bundle, path, answer.lease)

    def _work_on(self, claimed: _Claimed) -> None:
        """Run a claimed bundle, then report or release it (and end the pilot if it drained)."""
        ran = self._run(claimed)
        self.summary.bundles += 1
        lease_id = claimed.lease.lease_id
        if ran.lease_lost:
            self.stop.clear()
            _LOG.warning(
                "Bundle %s was re-queued by the scheduler; not reporting it.", claimed.bundle.bundle_id
            )
        elif self.stop.reason is not None and self.stop.reason != LEASE_LOST:
            self.client.release(lease_id, _release(ran.report))
            _count(self.summary, ran.report)
            _drained(self.summary, self.stop.reason)
            return
        else:
            self.client.report(lease_id, _report(ran.report, ran.failure))
            _count(self.summary, ran.report)
        if ran.failure is not None:
            self.errors_in_a_row += 1
            _LOG.error("Bundle %s failed before running: %s", claimed.bundle.bundle_id, ran.failure)
            if self.errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                raise ran.failure
        else:
            self.errors_in_a_row = 0
        if not self.options.keep_workspaces:
            shutil.rmtree(self.options.area / claimed.bundle.bundle_id, ignore_errors=True)
        self.idle_since = time.monotonic()

    def _run(self, claimed: _Claimed) -> _Ran:
        """Run the bundle on the pool sized for it, heartbeating its lease meanwhile."""
        pool = self.pool
        running = (lambda: pool.running) if pool is not None else (lambda: 0)
        progress = _Progress(running, claimed.bundle.bundle_id)
        beats = _Heartbeats(
            self.client,
            claimed.lease.lease_id,
            claimed.lease.ttl_s,
            progress,
            self.stop,
            end_of_life=lambda: (self.slot.walltime_left() or float("inf")) <= self.options.grace + 10,
        )
        beats.start()
        report: BundleReport | None = None
        failure: PilotError | None = None
        try:
            self._fit_pool(claimed.bundle)
            report = run_bundle(
                claimed.path,
                self.options.area,
                pool=pool,
                stop=self.stop,
                site=self.slot.site,
                slot_memory_mb=self.slot.memory_mb,
                on_quantum=progress.add,
                on_retry=progress.add_retry,
                on_phase=progress.tracker.set_phase,
            ).report
        except PilotError as err:
            failure = err
        finally:
            beats.close()
        return _Ran(report, failure, beats.lost)

    def _fit_pool(self, bundle: Bundle) -> None:
        """Resize the pool and set its memory budget for ``bundle`` (see `pool_settings`)."""
        if self.pool is None:
            return
        workers, limit = pool_settings(
            bundle.execution, self.slot.cores, self.options.processes, self.options.memory_per_worker
        )
        if workers != self.pool.size:
            _LOG.info(
                "Bundle %s: resizing the pool from %d to %d workers.",
                bundle.bundle_id,
                self.pool.size,
                workers,
            )
            self.pool.resize(workers)
        self.pool.memory_limit = limit


def _slot_message(slot: Slot, left: float | None, options: StartOptions) -> SlotMessage:
    return SlotMessage(
        cores=slot.cores,
        memory_mb=slot.memory_mb,
        disk_mb=slot.disk_mb,
        walltime_left_s=None if left is None else max(0.0, left - options.reserve_seconds),
        site=slot.site,
    )


def _outcome_ids(report: BundleReport | None) -> tuple[list[uuid.UUID], list[uuid.UUID], bool]:
    """(succeeded, failed, staged) for the scheduler.

    Only staged successes are done.  A quantum is failed if it failed, or is blocked
    by a failure; quanta cut short by a drain, and those waiting on them, are
    neither: the scheduler re-queues them.
    """
    if report is None or report.stage_out is None:
        return [], [], False
    status = {q.quantum_id: q for q in report.quanta}
    succeeded = [q.quantum_id for q in report.quanta if q.status == "succeeded"]
    failed = [
        q.quantum_id
        for q in report.quanta
        if q.status == "failed"
        or (q.status == "blocked" and (q.blocked_by is None or status[q.blocked_by].status == "failed"))
    ]
    return succeeded, failed, True


def _report(report: BundleReport | None, failure: PilotError | None) -> Report:
    succeeded, failed, staged = _outcome_ids(report)
    if report is None:
        code = int(failure.exit_code) if failure is not None else int(ExitCode.BAD_BUNDLE)
        return Report(status="error", exit_code=code, staged=False)
    return Report(
        status=report.status,
        exit_code=report.exit_code,
        succeeded_quantum_ids=succeeded,
        failed_quantum_ids=failed,
        staged=staged,
    )


def _release(report: BundleReport | None) -> Release:
    succeeded, failed, staged = _outcome_ids(report)
    return Release(succeeded_quantum_ids=succeeded, failed_quantum_ids=failed, staged=staged)


def _count(summary: PilotSummary, report: BundleReport | None) -> None:
    if report is not None:
        summary.quanta_succeeded += report.counts.get("succeeded", 0)
        summary.quanta_failed += report.counts.get("failed", 0)


def _drained(summary: PilotSummary, reason: str) -> PilotSummary:
    summary.exit_code = ExitCode.DRAINED
    summary.reason = f"drained: {reason}"
    return summary


def _sleep(seconds: float, stop: StopRequest) -> None:
    """Sleep up to ``seconds``, waking early when a stop is requested."""
    deadline = time.monotonic() + max(0.0, seconds)
    while stop.reason is None and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.2, left))
