"""``pilot run``: one bundle from file to staged outputs and ``report.json``."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from activators.registry import activator_class

from .bundle_model import Bundle, load_bundle
from .errors import BundleError, ConfigError, PilotError, PluginNotFound
from .executor.bundle_session import SessionSpec
from .executor.chaining_butler import IoCounts
from .executor.engine import ExecutionOutcome, consumers_of, execute_bundle, execution_order
from .executor.worker_pool import WorkerPool
from .exit_codes import ExitCode
from .interruption import StopRequest
from .journal import JOURNAL_NAME, Journal, quanta_to_skip
from .qgraph_io import load_bundle_graph
from .report import BundleReport, QuantumResult, count_statuses, environment, now
from .staging.dbb_token import apply_token
from .staging.input_cache import InputCache
from .staging.provenance import build_provenance, output_files
from .staging.retry import RetryPolicy
from .staging.stage_in import input_files, stage_in
from .staging.stage_out import produced_refs, stage_out
from .staging.upstream_inputs import fetch_upstream, upstream_refs
from .workspace import Workspace, input_cache_root, pilot_area, read_dbb_datastore

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class RunOutcome:
    """The report and where it was written."""

    report: BundleReport
    report_path: Path

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode(self.report.exit_code)


def run_bundle(
    bundle_path: str | Path,
    area: Path | None = None,
    *,
    pool: WorkerPool | None = None,
    stop: StopRequest | None = None,
    grace: float = 60.0,
    resume: bool = False,
    site: str | None = None,
    on_quantum: Callable[[QuantumResult], None] | None = None,
) -> RunOutcome:
    """Validate, stage in, execute, stage out and report one bundle.

    The bundle's workspace is ``<area>/<bundle_id>/``; inputs go through the area's
    input cache, shared by every bundle the pilot runs there.  ``pool`` is the
    pilot's warm worker pool; without one the quanta run in this process.  Quanta
    the workspace's journal shows succeeded are not run again; ``resume`` demands
    such a journal (resuming after a failed stage-out, say).  ``on_quantum`` sees each
    quantum's result as it finishes (progress for heartbeats).

    Raises
    ------
    PilotError
        Before anything was executed (bad bundle, stage-in failure).  Failures after
        execution started (failed quanta, stage-out) are reported in ``report.json``
        and by the outcome's exit code instead, so finished work is never lost.
    """
    started = now()
    wall0 = time.perf_counter()
    bundle_uri = ResourcePath(str(bundle_path), forceAbsolute=True)
    bundle = load_bundle(bundle_uri)
    qgraph_uri = bundle.qgraph_uri(bundle_uri)
    qg = load_bundle_graph(qgraph_uri, bundle.quantum_ids)
    _check_consistency(bundle, qg)
    area = pilot_area(area)
    workspace = Workspace.in_area(area, bundle.bundle_id)
    journal = Journal(workspace.root / JOURNAL_NAME)
    if resume and not journal.exists():
        raise ConfigError(
            f"nothing to resume: workspace {workspace.root} has no journal of bundle {bundle.bundle_id}"
        )
    apply_token(bundle.dbb.token)
    dbb = read_dbb_datastore(bundle.dbb.repo)
    local_repo = workspace.write_local_repo_config(dbb)
    loaded = time.perf_counter()
    quanta = qg.build_execution_quanta(bundle.quantum_ids)
    recorded = input_files(quanta, dbb.name)
    retry = RetryPolicy(bundle.staging.retry_attempts, bundle.staging.retry_backoff_seconds)
    staged_inputs = stage_in(
        recorded,
        dbb,
        workspace.repo,
        InputCache(input_cache_root(area), dbb.root),
        verify=bundle.staging.verify_checksums,
        parallel=bundle.staging.parallel_transfers,
        retry=retry,
    )
    stage_in_stats = staged_inputs.stats
    missing_upstream = fetch_upstream(
        upstream_refs(quanta, bundle.dbb.output_run, recorded),
        bundle.depends_on,
        bundle.dbb.staging_uri(),
        workspace,
        qg,
        stage_in_stats,
    )
    staged_in = time.perf_counter()
    order = execution_order(qg, bundle.quantum_ids)
    journaled = journal.succeeded()
    skipped = quanta_to_skip(qg, order, journaled, bundle.execution.transient_dataset_types)
    to_run = [q for q in order if q not in skipped]
    if skipped:
        _LOG.warning(
            "Bundle %s: %d quanta succeeded in an earlier run here; running the other %d.",
            bundle.bundle_id,
            len(skipped),
            len(to_run),
        )
    if pool is not None and to_run:
        pool.wait_ready()
    pool_ready = time.perf_counter()
    spec = SessionSpec(
        key=bundle.bundle_id,
        qgraph_uri=str(qgraph_uri),
        quantum_ids=tuple(bundle.quantum_ids),
        local_repo=str(local_repo),
        activator=bundle.execution.activator,
        raise_on_partial_outputs=bundle.execution.raise_on_partial_outputs,
        transient=tuple(bundle.execution.transient_dataset_types),
        fresh_workspace=workspace.fresh,
    )
    execution = (
        execute_bundle(
            qg,
            spec,
            to_run,
            pool=pool,
            fail_fast=bundle.execution.fail_fast,
            unavailable=consumers_of(quanta, missing_upstream),
            stop=stop,
            grace=grace,
            on_finished=_both(journal.record, on_quantum),
        )
        if to_run
        else ExecutionOutcome([], IoCounts(), {})
    )
    executed = time.perf_counter()
    ran = {result.quantum_id: result for result in execution.results}
    for quantum_id in skipped:
        ran[quantum_id] = journaled[quantum_id].model_copy(update={"resumed": True})
    results = [ran[quantum_id] for quantum_id in order]
    refs = produced_refs(qg, quanta, results, str(local_repo), execution.records)
    staged = {ref.id for ref in refs}
    for result in results:
        result.output_dataset_ids = [
            ref.id
            for refs_ in quanta[result.quantum_id].outputs.values()
            for ref in refs_
            if ref.id in staged
        ]
    counts, tasks = count_statuses(results)
    status: Literal["succeeded", "partial", "failed", "interrupted"]
    if any((r.caveat or "").startswith("interrupted") for r in results):
        status, code = "interrupted", ExitCode.INTERRUPTED
    elif counts["succeeded"] == len(results):
        status, code = "succeeded", ExitCode.SUCCESS
    else:
        status = "failed" if counts["succeeded"] == 0 else "partial"
        code = ExitCode.QUANTA_FAILED
    report = BundleReport(
        bundle_id=bundle.bundle_id,
        output_run=bundle.dbb.output_run,
        status=status,
        exit_code=int(code),
        counts=counts,
        tasks=tasks,
        started_at=started,
        ended_at=now(),
        wall_seconds=time.perf_counter() - wall0,
        workspace=str(workspace.root),
        processes=pool.size if pool is not None else 0,
        workers_replaced=execution.workers_replaced,
        resumed_quanta=len(skipped),
        stage_in=stage_in_stats,
        io=dataclasses.asdict(execution.io),
        quanta=results,
        **environment(),  # type: ignore[arg-type]
    )
    if bundle.staging.stage_out:
        try:
            provenance = build_provenance(
                bundle_id=bundle.bundle_id,
                output_run=bundle.dbb.output_run,
                source_qgraph=bundle.source_qgraph,
                site=site,
                quanta=quanta,
                results=results,
                input_checksums={
                    item.ref.id: (item.size, staged_inputs.checksums.get(item.relative_path))
                    for item in recorded
                },
                outputs=output_files(qg, str(local_repo), refs, execution.records),
            )
            report.stage_out = stage_out(
                qg=qg,
                refs=refs,
                bundle_id=bundle.bundle_id,
                output_run=bundle.dbb.output_run,
                local_repo=str(local_repo),
                work_dir=workspace.stage_out_dir,
                report_json=report.model_dump_json(indent=2).encode(),
                provenance_json=provenance.model_dump_json(indent=2).encode(),
                staging_root=bundle.dbb.staging_uri(),
                records=execution.records,
                retry=retry,
            )
        except PilotError as err:
            report.exit_code = int(err.exit_code)
            report.message = str(err)
    done = time.perf_counter()
    report.timings = {
        "load": loaded - wall0,
        "stage_in": staged_in - loaded,
        "pool_wait": pool_ready - staged_in,
        "execute": executed - pool_ready,
        "stage_out": done - executed,
        # From bundle loaded to report written, not counting any wait for the pool to warm up.
        "bundle_seconds": done - loaded - (pool_ready - staged_in),
    }
    report.ended_at = now()
    report.wall_seconds = done - wall0
    _write_report(report, workspace.report_path)
    return RunOutcome(report, workspace.report_path)


def _both(
    first: Callable[[QuantumResult], None], second: Callable[[QuantumResult], None] | None
) -> Callable[[QuantumResult], None]:
    if second is None:
        return first

    def call(result: QuantumResult) -> None:
        first(result)
        second(result)

    return call


def _check_consistency(bundle: Bundle, qg: PredictedQuantumGraph) -> None:
    if qg.header.output_run != bundle.dbb.output_run:
        raise BundleError(
            f"bundle {bundle.bundle_id}: dbb.output_run {bundle.dbb.output_run!r} does not match the "
            f"quantum graph's output run {qg.header.output_run!r}"
        )
    try:
        activator_class(bundle.execution.activator)
    except PluginNotFound as err:
        raise BundleError(f"bundle {bundle.bundle_id}: execution.activator: {err}") from None
    unknown = sorted(set(bundle.execution.transient_dataset_types) - set(qg.pipeline_graph.dataset_types))
    if unknown:
        raise BundleError(
            f"bundle {bundle.bundle_id}: execution.transient_dataset_types names {unknown[0]!r}, "
            "which is not a dataset type of the quantum graph"
        )


def _write_report(report: BundleReport, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
