"""Execute a bundle's quanta in dependency order; a failure blocks only its descendants."""

from __future__ import annotations

import logging
import resource
import time
import uuid
from collections.abc import Iterable, Mapping

import networkx
from lsst.daf.butler import Quantum
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

from activators.base import Activator

from .errors import InterruptedRun
from .interruption import StopRequest
from .report import QuantumResult, now

_LOG = logging.getLogger(__name__)


def execution_order(qg: PredictedQuantumGraph, quantum_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Return the bundle's quanta depth-first: each chain's quanta back to back.

    Chains (weakly connected components of the bundle's subgraph) are run one after
    another; within a chain, a deterministic topological order.
    """
    subgraph = qg.quantum_only_xgraph.subgraph(quantum_ids)
    order: list[uuid.UUID] = []
    position = {q: i for i, q in enumerate(networkx.lexicographical_topological_sort(subgraph, key=str))}
    chains = sorted(networkx.weakly_connected_components(subgraph), key=lambda c: min(position[q] for q in c))
    for chain in chains:
        order.extend(sorted(chain, key=position.__getitem__))
    return order


def execute_quanta(
    qg: PredictedQuantumGraph,
    quanta: Mapping[uuid.UUID, Quantum],
    order: list[uuid.UUID],
    activator: Activator,
    *,
    fail_fast: bool = False,
    unavailable: Mapping[uuid.UUID, str] | None = None,
    stop: StopRequest | None = None,
) -> list[QuantumResult]:
    """Run ``order`` through ``activator``; return one result per quantum, in that order.

    A quantum whose task raises is ``failed``; its in-bundle descendants are
    ``blocked`` and not attempted; everything else still runs (unless ``fail_fast``).
    Quanta in ``unavailable`` (an input that another bundle failed to produce) are
    ``blocked`` with the given reason, and so are their descendants.
    A ``stop`` request (from a signal) ends the loop: the running quantum is
    abandoned, it and the remaining quanta are ``not_run`` with an ``interrupted``
    caveat, and the results of finished quanta are returned to be staged out.
    """
    xgraph = qg.quantum_only_xgraph
    results: dict[uuid.UUID, QuantumResult] = {}
    blocked_by: dict[uuid.UUID, uuid.UUID] = {}
    stop = stop if stop is not None else StopRequest()
    stop_reason: str | None = None
    for quantum_id in order:
        if stop_reason is None and stop.reason is not None:
            stop_reason = f"interrupted: {stop.reason}"
        node = xgraph.nodes[quantum_id]
        result = QuantumResult(
            quantum_id=quantum_id,
            task_label=node["task_label"],
            data_id=dict(node["data_id"].required),
            status="not_run",
        )
        results[quantum_id] = result
        if stop_reason is not None:
            result.caveat = stop_reason
            continue
        if quantum_id in blocked_by:
            result.status = "blocked"
            result.blocked_by = blocked_by[quantum_id]
            continue
        if unavailable and quantum_id in unavailable:
            result.status = "blocked"
            result.caveat = unavailable[quantum_id]
            for descendant in networkx.descendants(xgraph, quantum_id):
                blocked_by.setdefault(descendant, quantum_id)
            continue
        try:
            _run_one(qg, quanta[quantum_id], quantum_id, activator, result, stop)
        except InterruptedRun as err:
            result.status = "not_run"
            result.caveat = f"interrupted: {err}"
            stop_reason = result.caveat
            continue
        if result.status == "failed":
            for descendant in networkx.descendants(xgraph, quantum_id):
                blocked_by.setdefault(descendant, quantum_id)
            if fail_fast:
                stop_reason = f"fail-fast after {result.task_label} {result.data_id} failed"
    return [results[q] for q in order]


def _run_one(
    qg: PredictedQuantumGraph,
    quantum: Quantum,
    quantum_id: uuid.UUID,
    activator: Activator,
    result: QuantumResult,
    stop: StopRequest,
) -> None:
    task_node = qg.pipeline_graph.tasks[result.task_label]
    result.started_at = now()
    wall0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    try:
        with stop.task_running():
            outcome = activator.execute(task_node, quantum, quantum_id)
    except InterruptedRun:
        raise
    except Exception as err:
        result.status = "failed"
        result.exception_type = f"{type(err).__module__}.{type(err).__qualname__}"
        result.exception_message = str(err)
        _LOG.warning("%s %s failed: %s: %s", result.task_label, result.data_id, type(err).__name__, err)
    else:
        result.status = "succeeded"
        if outcome.no_work:
            result.caveat = "no work found"
        elif outcome.already_done:
            result.caveat = "outputs already in workspace"
    finally:
        result.wall_seconds = time.perf_counter() - wall0
        result.cpu_seconds = _cpu_seconds() - cpu0
        # Linux reports ru_maxrss in KiB; this is the pilot process's high-water mark.
        result.max_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
