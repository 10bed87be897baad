"""The one execution engine: a bundle's quanta, depth-first, chain after chain, on a pool of workers.

Each worker opens the bundle once and runs whole chains, the next link of a chain
going to the worker that holds its inputs in memory (`dispatch` decides).  A task
that raises fails its quantum; a worker that dies (signal, segfault, memory limit)
fails only the quantum it was running and is replaced.  Either way the quantum's
descendants are ``blocked`` and everything else runs.  The pool is a `WorkerPool`
of warm processes or, with ``--processes 0``, an `InProcessPool` (the pilot's own
process): one loop, the same blocking, fail-fast, stop and grace in both.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import networkx
from lsst.daf.butler import Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

from ..errors import BundleError
from ..interruption import StopRequest
from ..report import QuantumResult
from .bundle_session import SessionSpec
from .chaining_butler import IoCounts
from .dispatch import DepthFirstDispatcher, sticky_groups
from .quantum_retry import RetryBook, RetrySettings
from .watchdog import TIMEOUT
from .worker import CloseBundle, Closed, OpenBundle, Opened, Pool, QuantumDone, RunQuantum, Worker, WorkerDied

_LOG = logging.getLogger(__name__)

POLL_SECONDS = 0.05
_DEATH_TYPES = {
    "died": "pilot.WorkerDied",
    "memory": "pilot.MemoryLimitExceeded",
    "timeout": TIMEOUT,
    "hang": TIMEOUT,
}


@dataclasses.dataclass
class ExecutionOutcome:
    """Per-quantum results (in planned order) and the bundle's I/O counts."""

    results: list[QuantumResult]
    io: IoCounts
    records: dict[str, DatastoreRecordData]
    """Datastore records of every dataset written to the workspace."""
    checksums: dict[uuid.UUID, tuple[int, str | None]] = dataclasses.field(default_factory=dict)
    """``(size, blake2b)`` of every file written, by dataset ID."""
    workers_replaced: int = 0


@dataclasses.dataclass(frozen=True)
class QuantumOutputs:
    """The files one finished quantum wrote, as its worker reported them."""

    records: dict[str, DatastoreRecordData]
    checksums: dict[uuid.UUID, tuple[int, str | None]]


def execution_order(qg: PredictedQuantumGraph, quantum_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Return the bundle's quanta depth-first: each chain's quanta back to back.

    Chains (weakly connected components of the bundle's subgraph) come one after
    another; within a chain, a deterministic topological order.
    """
    subgraph = qg.quantum_only_xgraph.subgraph(quantum_ids)
    order: list[uuid.UUID] = []
    position = {q: i for i, q in enumerate(networkx.lexicographical_topological_sort(subgraph, key=str))}
    chains = sorted(networkx.weakly_connected_components(subgraph), key=lambda c: min(position[q] for q in c))
    for chain in chains:
        order.extend(sorted(chain, key=position.__getitem__))
    return order


def consumers_of(quanta: Mapping[uuid.UUID, Quantum], dataset_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Map each quantum consuming one of ``dataset_ids`` to a reason naming the missing input."""
    reasons: dict[uuid.UUID, str] = {}
    for quantum_id, quantum in quanta.items():
        for refs in quantum.inputs.values():
            for ref in refs:
                if ref.id in dataset_ids and quantum_id not in reasons:
                    name = f"{ref.datasetType.name}@{ref.dataId.required}"
                    reasons[quantum_id] = f"input {name} was not produced by its upstream bundle"
    return reasons


class _Ledger:
    """Results of a bundle's quanta as they come in, and the blocking they cause."""

    def __init__(self, qg: PredictedQuantumGraph, order: list[uuid.UUID]) -> None:
        self.order = order
        self.xgraph = qg.quantum_only_xgraph
        self.results: dict[uuid.UUID, QuantumResult] = {q: self.blank(q) for q in order}

    def blank(self, quantum_id: uuid.UUID) -> QuantumResult:
        """A ``not_run`` result naming the quantum."""
        node = self.xgraph.nodes[quantum_id]
        return QuantumResult(
            quantum_id=quantum_id,
            task_label=node["task_label"],
            data_id=dict(node["data_id"].required),
            status="not_run",
        )

    def block(self, quantum_ids: Iterable[uuid.UUID], cause: uuid.UUID, reason: str | None = None) -> None:
        for quantum_id in quantum_ids:
            result = self.results[quantum_id]
            if result.status == "not_run" and result.started_at is None:
                result.status = "blocked"
                result.blocked_by = cause
                result.caveat = reason

    def unavailable(self, quantum_id: uuid.UUID, reason: str) -> None:
        result = self.results[quantum_id]
        result.status = "blocked"
        result.caveat = reason

    def mark_not_run(self, quantum_ids: Iterable[uuid.UUID], reason: str) -> None:
        for quantum_id in quantum_ids:
            result = self.results[quantum_id]
            if result.status == "not_run":
                result.caveat = reason

    def ordered(self) -> list[QuantumResult]:
        return [self.results[q] for q in self.order]


def execute_bundle(
    qg: PredictedQuantumGraph,
    spec: SessionSpec,
    order: list[uuid.UUID],
    *,
    pool: Pool[Any],
    fail_fast: bool = False,
    unavailable: Mapping[uuid.UUID, str] | None = None,
    stop: StopRequest | None = None,
    on_finished: Callable[[QuantumResult], None] | None = None,
    on_outputs: Callable[[QuantumResult, QuantumOutputs], None] | None = None,
    retries: RetryBook | None = None,
    on_attempt: Callable[[QuantumResult], None] | None = None,
) -> ExecutionOutcome:
    """Run ``order`` on ``pool`` and return one result per quantum, in that order.

    ``on_finished`` is called in this process with each quantum's result as it
    finishes (the journal); then ``on_outputs`` with the files it wrote (stage-out
    while other chains compute).

    ``unavailable`` quanta (an input another bundle failed to produce) are blocked
    with the given reason, with their descendants.  A ``stop`` request ends
    dispatching: running quanta get the stop's grace period and are then cut short;
    they and the undispatched quanta are ``not_run``.

    ``retries`` runs failed quanta again inside the job (`quantum_retry`); each failed
    attempt that is retried goes to ``on_attempt`` (the journal), not ``on_finished``.
    """
    return _BundleExecution(
        qg,
        spec,
        order,
        pool,
        fail_fast,
        unavailable or {},
        stop if stop is not None else StopRequest(),
        on_finished or (lambda result: None),
        on_outputs or (lambda result, outputs: None),
        retries or RetryBook(RetrySettings(retries=0)),
        on_attempt or (lambda result: None),
    ).run()


class _BundleExecution[W: Worker]:
    """The event loop that feeds a pool one bundle depth-first."""

    def __init__(
        self,
        qg: PredictedQuantumGraph,
        spec: SessionSpec,
        order: list[uuid.UUID],
        pool: Pool[W],
        fail_fast: bool,
        unavailable: Mapping[uuid.UUID, str],
        stop: StopRequest,
        on_finished: Callable[[QuantumResult], None],
        on_outputs: Callable[[QuantumResult, QuantumOutputs], None],
        retries: RetryBook,
        on_attempt: Callable[[QuantumResult], None],
    ) -> None:
        self.qg = qg
        self.retries = retries
        self.on_attempt = on_attempt
        self.on_finished = on_finished
        self.on_outputs = on_outputs
        self.spec = spec
        self.pool = pool
        self.fail_fast = fail_fast
        self.stop = stop
        self.killed_busy = False
        self.ledger = _Ledger(qg, order)
        self.xgraph = qg.quantum_only_xgraph.subgraph(order)
        transient_edges = self._transient_edges(order)
        self.sticky = sticky_groups(self.xgraph, transient_edges)
        self.dispatcher = DepthFirstDispatcher(self.xgraph, order, self.sticky)
        self.io = IoCounts()
        self.records: list[dict[str, DatastoreRecordData]] = []
        self.checksums: dict[uuid.UUID, tuple[int, str | None]] = {}
        self.opened: set[int] = set()
        self.recent: list[int] = []
        self.holder: dict[uuid.UUID, int] = {}
        self.pending_evictions: dict[int, set[uuid.UUID]] = {}
        self.remaining_consumers = self._count_consumers(order)
        self.stop_reason: str | None = None
        for quantum_id, reason in unavailable.items():
            self.ledger.unavailable(quantum_id, reason)
            self.ledger.block(self.dispatcher.failed(quantum_id), quantum_id)
            self.dispatcher.block([quantum_id])

    def _transient_edges(self, order: list[uuid.UUID]) -> list[tuple[uuid.UUID, uuid.UUID]]:
        if not self.spec.transient:
            return []
        bipartite = self.qg.bipartite_xgraph
        members = set(order)
        edges: list[tuple[uuid.UUID, uuid.UUID]] = []
        for producer in order:
            for dataset_id in bipartite.successors(producer):
                if bipartite.nodes[dataset_id]["dataset_type_name"] in self.spec.transient:
                    edges.extend((producer, c) for c in bipartite.successors(dataset_id) if c in members)
        return edges

    def _count_consumers(self, order: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        bipartite = self.qg.bipartite_xgraph
        members = set(order)
        counts: dict[uuid.UUID, int] = {}
        for producer in order:
            for dataset_id in bipartite.successors(producer):
                n = sum(1 for c in bipartite.successors(dataset_id) if c in members)
                if n:
                    counts[dataset_id] = n
        return counts

    # -- the loop ---------------------------------------------------------------

    def run(self) -> ExecutionOutcome:
        for worker in self.pool.workers:
            self._open(worker)
        while True:
            self._check_stop()
            self._dispatch()
            busy = [w for w in self.pool.workers if w.busy is not None]
            opening = [w for w in self.pool.workers if w.index not in self.opened]
            ready = self.dispatcher.has_ready() or bool(self.retries.waiting)
            if not busy and (not ready or self.stop_reason is not None) and not opening:
                break
            for worker, event in self.pool.events(POLL_SECONDS):
                self._handle(worker, event)
        never = self.dispatcher.drain() + [q for q, _ in self.retries.waiting]
        self.ledger.mark_not_run(never, self.stop_reason or "not run")
        self._close_bundle()
        records = DatastoreRecordData.merge_mappings(*self.records) if self.records else {}
        return ExecutionOutcome(self.ledger.ordered(), self.io, records, self.checksums, self.pool.replaced)

    def _open(self, worker: W) -> None:
        if not self.pool.send(worker, OpenBundle(self.spec)):
            _LOG.warning("Worker %d is gone before opening bundle %s.", worker.index, self.spec.key)

    def _check_stop(self) -> None:
        if self.stop.reason is not None and self.stop_reason is None:
            self.stop_reason = f"interrupted: {self.stop.reason}"
            _LOG.warning(
                "Stopping bundle %s (%s); %.0f s grace for running quanta.",
                self.spec.key,
                self.stop.reason,
                self.stop.grace,
            )
        deadline = self.stop.deadline
        if deadline is not None and not self.killed_busy and time.monotonic() > deadline:
            self.pool.kill_busy(f"{self.stop_reason}; killed after the {self.stop.grace:.0f} s grace period")
            self.killed_busy = True

    def _dispatch(self) -> None:
        if self.stop_reason is not None:
            return
        idle = [w for w in self.pool.workers if w.busy is None and w.index in self.opened]
        idle.sort(key=lambda w: -self.recent.index(w.index) if w.index in self.recent else 1)
        if self.retries.waiting:
            self._dispatch_memory_retry(idle)
            return  # the others wait until it has the workers' worth of memory it needs
        busy = sum(1 for w in self.pool.workers if w.busy is not None)
        for steal in (False, True):  # dispatch rule 4: stealing only after every worker's own pick
            for worker in idle:
                if busy >= self.retries.capacity(self.pool.size):
                    return
                if worker.busy is not None:
                    continue
                quantum_id = self.dispatcher.next_for(worker.index, steal=steal)
                if quantum_id is not None:
                    self._send_quantum(worker, quantum_id)
                    busy += 1

    def _dispatch_memory_retry(self, idle: list[W]) -> None:
        """Rule 3 of `quantum_retry`: a retry with k budgets runs once k workers' worth is free."""
        quantum_id, retry = self.retries.waiting[0]
        busy = sum(1 for w in self.pool.workers if w.busy is not None)
        held = self.retries.idle_for(retry)
        if not idle or busy + 1 + held > self.retries.capacity(self.pool.size):
            return
        self.retries.waiting.pop(0)
        worker = idle[0]
        self.dispatcher.take(quantum_id, worker.index)
        self.retries.held[worker.index] = held
        self._send_quantum(worker, quantum_id, retry.memory_factor)

    def _send_quantum(self, worker: W, quantum_id: uuid.UUID, memory_factor: float = 1.0) -> None:
        evict = tuple(self.pending_evictions.pop(worker.index, ()))
        worker.busy = (self.spec.key, quantum_id)
        self.ledger.results[quantum_id].worker = worker.index
        spec = self.spec
        tries = self.retries.tries(quantum_id)
        run = RunQuantum(
            spec.key, quantum_id, evict, spec.quantum_timeout, spec.hang_seconds, memory_factor, tries
        )
        if not self.pool.send(worker, run):
            _LOG.warning("Worker %d is gone; its death will be handled.", worker.index)

    def _handle(self, worker: W, event: object) -> None:
        match event:
            case Opened(key, error) if key == self.spec.key:
                if error is not None:
                    raise BundleError(
                        f"worker {worker.index} cannot open bundle {key}: {error.splitlines()[0]}"
                    )
                self.opened.add(worker.index)
            case QuantumDone(key, result, held, records, checksums) if key == self.spec.key:
                worker.busy = None
                self.retries.held.pop(worker.index, None)
                self._remember_recent(worker.index)
                for dataset_id in held:
                    self.holder.setdefault(dataset_id, worker.index)
                if result.status == "failed" and self._retried(result, "task"):
                    return  # what the failed attempt wrote (its log) the next attempt writes again
                outputs = QuantumOutputs(
                    {name: DatastoreRecordData.from_simple(data) for name, data in records.items()}, checksums
                )
                self.records.append(outputs.records)
                self.checksums.update(checksums)
                self._finish(result)
                self.on_outputs(result, outputs)
            case Closed(key, io):
                self.io.add(io)
            case WorkerDied() as died:
                self._worker_died(worker, died)

    def _remember_recent(self, index: int) -> None:
        if index in self.recent:
            self.recent.remove(index)
        self.recent.append(index)

    def _finish(self, result: QuantumResult) -> None:
        quantum_id = result.quantum_id
        result.attempts = self.retries.attempts(quantum_id)
        self.ledger.results[quantum_id] = result
        self.on_finished(result)
        if result.status == "succeeded":
            self.dispatcher.succeeded(quantum_id)
        else:
            self.ledger.block(self.dispatcher.failed(quantum_id), quantum_id)
            if self.fail_fast and self.stop_reason is None:
                self.stop_reason = f"fail-fast after {result.task_label} {result.data_id} failed"
        self._release_inputs(quantum_id)

    def _release_inputs(self, quantum_id: uuid.UUID) -> None:
        """Tell holders to drop intermediates whose consumers have all run."""
        for dataset_id in self.qg.bipartite_xgraph.predecessors(quantum_id):
            if dataset_id not in self.remaining_consumers:
                continue
            self.remaining_consumers[dataset_id] -= 1
            if self.remaining_consumers[dataset_id] <= 0 and dataset_id in self.holder:
                self.pending_evictions.setdefault(self.holder.pop(dataset_id), set()).add(dataset_id)

    def _retried(self, failure: QuantumResult, kind: str) -> bool:
        """Whether the failed attempt runs again (`quantum_retry`); if so, it is journaled as an attempt."""
        quantum_id = failure.quantum_id
        if self.stop_reason is not None or (kind != "task" and quantum_id in self.sticky):
            return False  # stopping; or its transient inputs died with its worker
        retry = self.retries.consider(failure, kind)
        if retry is None:
            return False
        self.on_attempt(failure)
        _LOG.warning(
            "Quantum %s %s failed (%s); running it again (attempt %d of %d%s).",
            failure.task_label,
            failure.data_id,
            failure.exception_type,
            self.retries.tries(quantum_id),
            self.retries.settings.retries + 1,
            f", {retry.memory_factor:g}x memory" if retry.memory_factor > 1 else "",
        )
        self.ledger.results[quantum_id] = self.ledger.blank(quantum_id)
        if retry.memory_factor == 1:
            self.dispatcher.retry(quantum_id)
        return True

    def _worker_died(self, worker: W, died: WorkerDied) -> None:
        _LOG.warning("Worker %d died: %s", worker.index, died.reason)
        self._check_stop()  # a stop that came during `events` (in-process) is this death's cause
        running = worker.busy
        worker.busy = None
        self.retries.held.pop(worker.index, None)
        self.opened.discard(worker.index)
        self.pending_evictions.pop(worker.index, None)
        lost = {d for d, w in self.holder.items() if w == worker.index}
        for dataset_id in lost:
            del self.holder[dataset_id]
        if running is not None:
            self._lost_quantum(running[1], died)
        self._block_lost_transients(worker.index, lost)
        fresh = self.pool.replace(worker)
        if self.stop_reason is None or any(w.busy for w in self.pool.workers):
            self._open(fresh)
        else:
            self.opened.add(fresh.index)

    def _lost_quantum(self, quantum_id: uuid.UUID, died: WorkerDied) -> None:
        """The quantum a dead worker was running: not run (a stop killed it), retried, or failed."""
        result = self.ledger.results[quantum_id]
        interrupted = self.stop_reason is not None and self.stop_reason.startswith("interrupted")
        if interrupted and not died.memory:
            result.status = "not_run"
            result.caveat = died.reason
        else:
            result.status = "failed"
            result.exception_type = _DEATH_TYPES[died.kind]
            result.exception_message = died.reason
            if self._retried(result, died.kind):
                return
            result.attempts = self.retries.attempts(quantum_id)
            self.on_finished(result)  # journaled and counted like any failure
        self.ledger.block(self.dispatcher.failed(quantum_id), quantum_id)
        self.dispatcher.block([quantum_id])

    def _block_lost_transients(self, index: int, lost: set[uuid.UUID]) -> None:
        """Quanta waiting for a transient dataset that died with its worker cannot run."""
        if not self.spec.transient or not lost:
            return
        bipartite = self.qg.bipartite_xgraph
        for dataset_id in lost:
            if bipartite.nodes[dataset_id]["dataset_type_name"] not in self.spec.transient:
                continue
            producer = next(iter(bipartite.predecessors(dataset_id)))
            for consumer in bipartite.successors(dataset_id):
                if consumer in self.ledger.results and self.ledger.results[consumer].started_at is None:
                    reason = f"transient input was lost when worker {index} died"
                    self.ledger.block([consumer], producer, reason)
                    self.ledger.block(self.dispatcher.failed(consumer), producer, reason)
                    self.dispatcher.block([consumer])

    def _close_bundle(self) -> None:
        waiting = set()
        for worker in self.pool.workers:
            if worker.index in self.opened and self.pool.send(worker, CloseBundle(self.spec.key)):
                waiting.add(worker.index)
        deadline = time.monotonic() + 60
        while waiting and time.monotonic() < deadline:
            for worker, event in self.pool.events(POLL_SECONDS):
                if isinstance(event, Closed) and event.key == self.spec.key:
                    self.io.add(event.io)
                    waiting.discard(worker.index)
                elif isinstance(event, WorkerDied):
                    waiting.discard(worker.index)
                    self.pool.replace(worker)
