"""Depth-first dispatch: which ready quantum an idle worker runs next.

Preference, for an idle worker ``w``:

1. a ready quantum pinned to ``w`` (it consumes a transient dataset ``w`` holds);
2. a ready quantum with the most predecessors that ran on ``w`` (the next link of the
   chain ``w`` is running, or a fan-in whose inputs ``w`` holds in memory);
3. the first ready quantum, in topological order, that no other worker has a claim
   on (a new chain);
4. anything ready and not pinned elsewhere (work stealing: inputs read from disk), only
   once every idle worker has had its pick of 1–3: the next link of a chain goes to the
   worker that ran its predecessor when that worker is idle in the same round, even if
   another idle worker is served first.

A failed quantum blocks its descendants; they never become ready.  A quantum the engine
retries (`quantum_retry`) becomes ready again, its descendants still waiting for it.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Mapping

import networkx


class DepthFirstDispatcher:
    """Tracks readiness of a bundle's quanta and assigns them to workers.

    Parameters
    ----------
    xgraph : `networkx.DiGraph`
        The bundle's quantum-only graph (only the bundle's quanta).
    order : `list` [`uuid.UUID`]
        Topological order used as the tie-breaker (chains first-come, first-served).
    sticky : `~collections.abc.Mapping` [`uuid.UUID`, `int`]
        Quanta that must share a worker (linked by transient datasets), by group.
    """

    def __init__(
        self, xgraph: networkx.DiGraph, order: list[uuid.UUID], sticky: Mapping[uuid.UUID, int]
    ) -> None:
        self._graph = xgraph
        self._position = {q: i for i, q in enumerate(order)}
        self._sticky = dict(sticky)
        self._pending_parents = {q: xgraph.in_degree(q) for q in order}
        self._ready: set[uuid.UUID] = set()
        self._heap: list[tuple[int, uuid.UUID]] = []
        self._ran_on: dict[uuid.UUID, int] = {}
        self._group_worker: dict[int, int] = {}
        self._affine: dict[int, set[uuid.UUID]] = {}
        self._blocked: set[uuid.UUID] = set()
        for quantum_id in order:
            if self._pending_parents[quantum_id] == 0:
                self._make_ready(quantum_id)

    def _make_ready(self, quantum_id: uuid.UUID) -> None:
        self._ready.add(quantum_id)
        heapq.heappush(self._heap, (self._position[quantum_id], quantum_id))

    def has_ready(self) -> bool:
        """Whether any quantum is ready to run."""
        return bool(self._ready)

    def _pinned_to(self, quantum_id: uuid.UUID) -> int | None:
        group = self._sticky.get(quantum_id)
        return None if group is None else self._group_worker.get(group)

    def next_for(self, worker: int, steal: bool = True) -> uuid.UUID | None:
        """Choose (and take) the next quantum for idle ``worker``, or `None`.

        ``steal=False`` stops at rule 3 (the first round over the idle workers).
        """
        affine = [q for q in self._affine.get(worker, ()) if q in self._ready]
        pinned = [q for q in affine if self._pinned_to(q) == worker]
        if pinned:
            return self._take(min(pinned, key=self._position.__getitem__), worker)
        allowed = [q for q in affine if self._pinned_to(q) in (None, worker)]
        if allowed:
            best = max(allowed, key=lambda q: (self._parents_on(q, worker), -self._position[q]))
            return self._take(best, worker)
        claimed = {q for w, qs in self._affine.items() if w != worker for q in qs}
        fallback: uuid.UUID | None = None
        skipped: list[tuple[int, uuid.UUID]] = []
        while self._heap:
            position, quantum_id = heapq.heappop(self._heap)
            if quantum_id not in self._ready:
                continue
            skipped.append((position, quantum_id))
            if self._pinned_to(quantum_id) not in (None, worker):
                continue
            if quantum_id not in claimed:
                fallback = quantum_id
                break
            if fallback is None:
                fallback = quantum_id
        for item in skipped:
            heapq.heappush(self._heap, item)
        if fallback is None or (not steal and fallback in claimed):
            return None
        return self._take(fallback, worker)

    def _parents_on(self, quantum_id: uuid.UUID, worker: int) -> int:
        return sum(1 for p in self._graph.predecessors(quantum_id) if self._ran_on.get(p) == worker)

    def _take(self, quantum_id: uuid.UUID, worker: int) -> uuid.UUID:
        self._ready.discard(quantum_id)
        for qs in self._affine.values():
            qs.discard(quantum_id)
        self._ran_on[quantum_id] = worker
        group = self._sticky.get(quantum_id)
        if group is not None:
            self._group_worker.setdefault(group, worker)
        return quantum_id

    def take(self, quantum_id: uuid.UUID, worker: int) -> None:
        """Hand a specific quantum to ``worker`` (a retry the engine places itself)."""
        self._take(quantum_id, worker)

    def retry(self, quantum_id: uuid.UUID) -> None:
        """Make a quantum that failed an attempt ready again; its descendants keep waiting."""
        self._ran_on.pop(quantum_id, None)
        self._make_ready(quantum_id)

    def succeeded(self, quantum_id: uuid.UUID) -> None:
        """Record success: children whose parents all succeeded become ready."""
        worker = self._ran_on[quantum_id]
        for child in self._graph.successors(quantum_id):
            if child in self._blocked:
                continue
            self._pending_parents[child] -= 1
            self._affine.setdefault(worker, set()).add(child)
            if self._pending_parents[child] == 0:
                self._make_ready(child)

    def failed(self, quantum_id: uuid.UUID) -> set[uuid.UUID]:
        """Record failure; return the descendants that are now blocked."""
        blocked = set(networkx.descendants(self._graph, quantum_id)) - self._blocked
        self.block(blocked)
        return blocked

    def block(self, quantum_ids: Iterable[uuid.UUID]) -> None:
        """Take quanta (and nothing else) out of consideration."""
        for quantum_id in quantum_ids:
            self._blocked.add(quantum_id)
            self._ready.discard(quantum_id)

    def drain(self) -> list[uuid.UUID]:
        """Stop dispatching; return the quanta that were never taken."""
        never = [q for q in self._position if q not in self._ran_on and q not in self._blocked]
        self._ready.clear()
        self._heap.clear()
        return never


def sticky_groups(
    xgraph: networkx.DiGraph, transient_edges: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, int]:
    """Group quanta linked by transient datasets (producer, consumer) so they share a worker."""
    linked = networkx.Graph()
    linked.add_edges_from(transient_edges)
    groups: dict[uuid.UUID, int] = {}
    for index, component in enumerate(networkx.connected_components(linked)):
        for quantum_id in component:
            groups[quantum_id] = index
    return groups
