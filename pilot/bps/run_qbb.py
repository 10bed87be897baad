"""``pilot run-qbb``: what a BPS job runs, on the pilot's engine.

BPS formats each job's command as ``pipetask {runPreCmdOpts} run-qbb {butlerConfig}
{qgraphFile} --qgraph-node-id {ids} …``; putting ``pilot`` in place of ``pipetask`` in
``runQuantumCommand`` runs the job's cluster of quanta depth-first, intermediates handed
over in memory, on warm workers (``-j N``; one in this process for ``-j 1``).  As
``pipetask run-qbb`` does, the quanta read inputs from and write outputs straight into
the butler's datastore, so BPS's final job (``butler aggregate-graph``) registers them
unchanged; there is no workspace, stage-in or stage-out.  Exit codes are pipe_base's,
since BPS's retry rules (``retryUnlessExit``) are written against them: 0 when every
quantum succeeded, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import uuid
from collections.abc import Iterable
from typing import Any

from lsst.resources import ResourcePath

from ..executor.bundle_session import SessionSpec
from ..executor.engine import execute_bundle, execution_order
from ..executor.in_process import InProcessPool
from ..executor.worker import Pool
from ..executor.worker_pool import WorkerPool
from ..interruption import stop_on_signals
from ..qgraph_io import load_bundle_graph
from ..report import QuantumResult, count_statuses

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunQbbOptions:
    """The ``pipetask run-qbb`` options the pilot honours."""

    processes: int = 1
    fail_fast: bool = False
    raise_on_partial_outputs: bool = True
    no_existing_outputs: bool = False


def parse_node_ids(values: Iterable[str]) -> list[uuid.UUID]:
    """Quantum IDs from ``--qgraph-node-id`` values, each one ID or a comma-separated list."""
    return [uuid.UUID(part.strip()) for value in values for part in value.split(",") if part.strip()]


def run_qbb(
    butler_config: str, qgraph: str, node_ids: list[uuid.UUID], options: RunQbbOptions
) -> list[QuantumResult]:
    """Run the quanta (all of the graph's if ``node_ids`` is empty); return their results."""
    qgraph_uri = ResourcePath(qgraph, forceAbsolute=True)
    qg = load_bundle_graph(qgraph_uri, node_ids or None)
    quantum_ids = node_ids or list(qg.quantum_only_xgraph)
    spec = SessionSpec(
        key=f"run-qbb-{uuid.uuid4().hex[:8]}",
        qgraph_uri=str(qgraph_uri),
        quantum_ids=tuple(quantum_ids),
        local_repo=butler_config,
        raise_on_partial_outputs=options.raise_on_partial_outputs,
        fresh_workspace=options.no_existing_outputs,
        hash_outputs=False,  # provenance is the final job's business here
    )
    with stop_on_signals(signal.SIGTERM, signal.SIGINT) as stop:
        pool: Pool[Any] = InProcessPool(stop) if options.processes == 1 else WorkerPool(options.processes)
        if isinstance(pool, WorkerPool):
            pool.start()
        try:
            outcome = execute_bundle(
                qg,
                spec,
                execution_order(qg, quantum_ids),
                pool=pool,
                fail_fast=options.fail_fast,
                stop=stop,
                on_finished=_log_result,
            )
        finally:
            pool.close()
    counts, _ = count_statuses(outcome.results)
    _LOG.info("Executed %d quanta: %s.", len(outcome.results), counts)
    return outcome.results


def _log_result(result: QuantumResult) -> None:
    if result.status == "failed":
        _LOG.error(
            "Quantum %s of %s %s failed: %s: %s",
            result.quantum_id,
            result.task_label,
            result.data_id,
            result.exception_type,
            result.exception_message,
        )
