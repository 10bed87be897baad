"""``pilot run``: one bundle from file to staged outputs and ``report.json``, as a recipe of named steps.

`run_bundle` reads top to bottom as the data flow of DESIGN.md: prepare (load,
validate, workspace), stage in, plan (depth-first order, what the journal says is
done), execute, stage out, report.  Each step returns what the next needs; the
report is assembled in one place (`_assemble_report`) from what the steps returned.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from lsst.daf.butler import DatasetRef, Quantum
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from activators.registry import activator_class

from .bundle_model import Bundle, load_bundle
from .errors import BundleError, ConfigError, PilotError, PluginNotFound
from .executor.bundle_session import SessionSpec
from .executor.engine import ExecutionOutcome, consumers_of, execute_bundle, execution_order
from .executor.in_process import InProcessPool
from .executor.quantum_retry import RetryBook, RetrySettings
from .executor.worker import Pool
from .exit_codes import ExitCode
from .interruption import StopRequest
from .journal import JOURNAL_NAME, Journal, quanta_to_skip
from .qgraph_io import load_bundle_graph
from .report import BundleReport, IoCounts, QuantumResult, StageOutRecord, count_statuses, environment, now
from .staging.area import staging_root
from .staging.dbb_token import apply_token
from .staging.input_cache import InputCache
from .staging.provenance import build_provenance, output_files
from .staging.retry import RetryPolicy
from .staging.stage_in import InputFile, StagedInputs, input_files, stage_in
from .staging.stage_out import StageOut, produced_refs
from .staging.upstream_inputs import fetch_upstream, upstream_refs
from .workspace import DBBDatastore, Workspace, input_cache_root, pilot_area, read_dbb_datastore

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
    pool: Pool[Any] | None = None,
    stop: StopRequest | None = None,
    resume: bool = False,
    site: str | None = None,
    slot_memory_mb: int | None = None,
    on_quantum: Callable[[QuantumResult], None] | None = None,
    on_retry: Callable[[QuantumResult], None] | None = None,
    overrides: Mapping[str, Any] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Validate, stage in, execute, stage out and report one bundle.

    The bundle's workspace is ``<area>/<bundle_id>/``; inputs go through the area's
    input cache, shared by every bundle the pilot runs there.  ``pool`` is the
    pilot's warm worker pool; without one the quanta run in this process.  Quanta
    the workspace's journal shows succeeded are not run again; ``resume`` demands
    such a journal (resuming after a failed stage-out, say).  ``stop`` ends the run
    early, with its grace period for running quanta.  ``on_quantum`` sees each
    quantum's result as it finishes (progress for heartbeats), ``on_retry`` each failed
    attempt that runs again, ``on_phase`` each phase as it begins (stage-in, execute,
    stage-out).  ``slot_memory_mb`` bounds
    the memory of in-job retries after memory failures.  ``overrides`` replace
    fields of the bundle's ``execution`` (the command line wins over the bundle).

    Raises
    ------
    PilotError
        Before anything was executed (bad bundle, stage-in failure).  Failures after
        execution started (failed quanta, stage-out) are reported in ``report.json``
        and by the outcome's exit code instead, so finished work is never lost.
    """
    clock = _Clock()
    stop = stop if stop is not None else StopRequest()
    job = _prepare(bundle_path, area, resume, overrides or {})
    clock.mark("load")
    phase = on_phase or (lambda _: None)
    phase("stage-in")
    inputs = _stage_in(job)
    clock.mark("stage_in")
    plan = _plan(job, inputs)
    pool = pool if pool is not None else InProcessPool(stop)
    if plan.to_run:
        pool.wait_ready()
    clock.mark("pool_wait")
    stage = _open_stage_out(job)
    try:
        hooks = _Hooks(on_quantum, on_retry)
        phase("execute")
        execution = _execute(job, plan, inputs, pool, stop, hooks, stage, slot_memory_mb)
        clock.mark("execute")
        results, staged, error = _final_results(job, plan, execution, stage)
        processes = 0 if isinstance(pool, InProcessPool) else pool.size
        facts = _Facts(job, plan, inputs, execution, results, processes)
        phase("stage-out")
        stage_out_record, error = _stage_out(facts, stage, staged, site, clock, error)
    finally:
        if stage is not None:
            stage.close()
    clock.mark("stage_out")
    report = _assemble_report(facts, clock, stage_out_record, error)
    _write_report(report, job.workspace.report_path)
    return RunOutcome(report, job.workspace.report_path)


# -- the steps -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """A validated bundle, its graph and its workspace, ready to stage in."""

    bundle: Bundle
    qgraph_uri: ResourcePath
    qg: PredictedQuantumGraph
    quanta: dict[uuid.UUID, Quantum]
    workspace: Workspace
    journal: Journal
    dbb: DBBDatastore
    local_repo: ResourcePath
    area: Path
    retry: RetryPolicy


def _prepare(bundle_path: str | Path, area: Path | None, resume: bool, overrides: Mapping[str, Any]) -> _Job:
    """Load and check the bundle and its graph; set up the workspace and the DBB token."""
    bundle_uri = ResourcePath(str(bundle_path), forceAbsolute=True)
    bundle = load_bundle(bundle_uri)
    if overrides:
        bundle = bundle.model_copy(update={"execution": bundle.execution.model_copy(update=overrides)})
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
    return _Job(
        bundle=bundle,
        qgraph_uri=qgraph_uri,
        qg=qg,
        quanta=qg.build_execution_quanta(bundle.quantum_ids),
        workspace=workspace,
        journal=journal,
        dbb=dbb,
        local_repo=workspace.write_local_repo_config(dbb),
        area=area,
        retry=RetryPolicy(bundle.staging.retry_attempts, bundle.staging.retry_backoff_seconds),
    )


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What stage-in fetched, and the upstream inputs that could not be had."""

    recorded: list[InputFile]
    staged: StagedInputs
    missing_upstream: set[uuid.UUID]


def _stage_in(job: _Job) -> _Inputs:
    """Fetch the bundle's inputs through the input cache, and upstream bundles' outputs."""
    bundle = job.bundle
    recorded = input_files(job.quanta, job.dbb.name)
    staged = stage_in(
        recorded,
        job.dbb,
        job.workspace.repo,
        InputCache(input_cache_root(job.area), job.dbb.root),
        verify=bundle.staging.verify_checksums,
        parallel=bundle.staging.parallel_transfers,
        retry=job.retry,
    )
    missing = fetch_upstream(
        upstream_refs(job.quanta, bundle.dbb.output_run, recorded),
        bundle.depends_on,
        staging_root(bundle.dbb.repo, bundle.dbb.staging),
        job.workspace,
        job.qg,
        staged.stats,
    )
    return _Inputs(recorded, staged, missing)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Depth-first order, what the journal shows done, and what is left to run."""

    order: list[uuid.UUID]
    journaled: dict[uuid.UUID, QuantumResult]
    skipped: set[uuid.UUID]
    to_run: list[uuid.UUID]


def _plan(job: _Job, inputs: _Inputs) -> _Plan:
    """Order the quanta depth-first and leave out those an earlier run here finished."""
    order = execution_order(job.qg, job.bundle.quantum_ids)
    journaled = job.journal.succeeded()
    skipped = quanta_to_skip(job.qg, order, journaled, job.bundle.execution.transient_dataset_types)
    to_run = [q for q in order if q not in skipped]
    if skipped:
        _LOG.warning(
            "Bundle %s: %d quanta succeeded in an earlier run here; running the other %d.",
            job.bundle.bundle_id,
            len(skipped),
            len(to_run),
        )
    return _Plan(order, journaled, skipped, to_run)


def _execute(
    job: _Job,
    plan: _Plan,
    inputs: _Inputs,
    pool: Pool[Any],
    stop: StopRequest,
    hooks: _Hooks,
    stage: StageOut | None,
    slot_memory_mb: int | None,
) -> ExecutionOutcome:
    """Run what is left on the pool, journaling and staging each quantum as it finishes."""
    if not plan.to_run:
        return ExecutionOutcome([], IoCounts(), {})
    execution = job.bundle.execution
    spec = SessionSpec(
        key=job.bundle.bundle_id,
        qgraph_uri=str(job.qgraph_uri),
        quantum_ids=tuple(job.bundle.quantum_ids),
        local_repo=str(job.local_repo),
        activator=execution.activator,
        activators_by_label=tuple(sorted(execution.activators_by_label.items())),
        activator_settings=tuple(sorted(execution.activator_settings.items())),
        workspace=str(job.workspace.root),
        raise_on_partial_outputs=execution.raise_on_partial_outputs,
        transient=tuple(execution.transient_dataset_types),
        fresh_workspace=job.workspace.fresh,
        hash_outputs=job.bundle.staging.verify_checksums,
        quantum_timeout=execution.quantum_timeout_seconds,
        hang_seconds=execution.hang_seconds,
        repo_mode=execution.local_repo,
    )
    return execute_bundle(
        job.qg,
        spec,
        plan.to_run,
        pool=pool,
        fail_fast=execution.fail_fast,
        unavailable=consumers_of(job.quanta, inputs.missing_upstream),
        stop=stop,
        on_finished=_both(job.journal.record, hooks.on_quantum),
        on_outputs=None if stage is None else (lambda result, outputs: stage.add(result, outputs.records)),
        retries=RetryBook(
            RetrySettings(
                retries=execution.retries,
                memory_multiplier=execution.memory_multiplier,
                transient_exceptions=frozenset(execution.retry_exceptions),
                unless_exit=frozenset(job.bundle.retries.retry_unless_exit),
                pool_size=pool.size,
                slot_budgets=_slot_budgets(pool, slot_memory_mb),
            ),
            prior=job.journal.attempts(),
        ),
        on_attempt=_both(job.journal.record_attempt, hooks.on_retry),
    )


@dataclasses.dataclass(frozen=True)
class _Hooks:
    """The caller's callbacks: each quantum's final result, and each failed attempt retried."""

    on_quantum: Callable[[QuantumResult], None] | None
    on_retry: Callable[[QuantumResult], None] | None


def _slot_budgets(pool: Pool[Any], slot_memory_mb: int | None) -> int:
    """The slot's memory in worker budgets (for memory retries), at least the pool's workers."""
    budget = getattr(pool, "memory_limit", None)
    if not budget or slot_memory_mb is None:
        return pool.size
    return max(pool.size, slot_memory_mb * 2**20 // budget)


def _open_stage_out(job: _Job) -> StageOut | None:
    """The bundle's stage-out, opened before execution so that finished chains stage while others run."""
    bundle = job.bundle
    if not bundle.staging.stage_out:
        return None
    return StageOut(
        qg=job.qg,
        quanta=job.quanta,
        bundle_id=bundle.bundle_id,
        output_run=bundle.dbb.output_run,
        local_repo=str(job.local_repo),
        work_dir=job.workspace.stage_out_dir,
        staging_root=staging_root(bundle.dbb.repo, bundle.dbb.staging),
        retry=job.retry,
    )


def _final_results(
    job: _Job, plan: _Plan, execution: ExecutionOutcome, stage: StageOut | None
) -> tuple[list[QuantumResult], set[uuid.UUID], PilotError | None]:
    """Every quantum's result in planned order (journaled ones marked resumed), with its staged outputs.

    Returns the results, the IDs of the datasets staged (or, without stage-out,
    present in the workspace) and the error that stopped placing them, if any.
    """
    ran = {result.quantum_id: result for result in execution.results}
    for quantum_id in plan.skipped:
        ran[quantum_id] = plan.journaled[quantum_id].model_copy(update={"resumed": True})
    results = [ran[quantum_id] for quantum_id in plan.order]
    error: PilotError | None = None
    if stage is None:
        refs = produced_refs(job.qg, job.quanta, results, str(job.local_repo), execution.records)
        staged = {ref.id for ref in refs}
    else:
        try:
            staged = stage.complete(results)
        except PilotError as err:
            staged, error = stage.staged_ids(), err
    with_outputs = [
        result.model_copy(
            update={
                "output_dataset_ids": [
                    ref.id
                    for refs_ in job.quanta[result.quantum_id].outputs.values()
                    for ref in refs_
                    if ref.id in staged
                ]
            }
        )
        for result in results
    ]
    return with_outputs, staged, error


@dataclasses.dataclass(frozen=True)
class _Facts:
    """Everything the report says, as the steps left it."""

    job: _Job
    plan: _Plan
    inputs: _Inputs
    execution: ExecutionOutcome
    results: list[QuantumResult]
    processes: int


def _stage_out(
    facts: _Facts,
    stage: StageOut | None,
    staged: set[uuid.UUID],
    site: str | None,
    clock: _Clock,
    error: PilotError | None,
) -> tuple[StageOutRecord | None, PilotError | None]:
    """Commit the placed outputs with the report and provenance; an error is returned, not raised."""
    if stage is None:
        return None, None
    job, inputs = facts.job, facts.inputs
    bundle = job.bundle
    try:
        if error is not None:
            return None, error
        checksums = dict(facts.execution.checksums)
        unhashed = [ref for ref in _refs_of(job, staged) if ref.id not in checksums]
        checksums.update(
            output_files(
                job.qg,
                str(job.local_repo),
                unhashed,
                facts.execution.records,
                hash_files=bundle.staging.verify_checksums,
            )
        )
        provenance = build_provenance(
            bundle_id=bundle.bundle_id,
            output_run=bundle.dbb.output_run,
            source_qgraph=bundle.source_qgraph,
            site=site,
            quanta=job.quanta,
            results=facts.results,
            input_checksums={
                item.ref.id: (item.size, inputs.staged.checksums.get(item.relative_path))
                for item in inputs.recorded
            },
            outputs={dataset_id: checksums[dataset_id] for dataset_id in staged if dataset_id in checksums},
        )
        staged_report = _assemble_report(facts, clock, None, None)
        record = stage.commit(
            staged_report.model_dump_json(indent=2).encode(), provenance.model_dump_json(indent=2).encode()
        )
        return record, None
    except PilotError as err:
        return None, err


def _refs_of(job: _Job, dataset_ids: set[uuid.UUID]) -> list[DatasetRef]:
    """The bundle's output refs with these IDs."""
    return [
        ref
        for quantum in job.quanta.values()
        for refs in quantum.outputs.values()
        for ref in refs
        if ref.id in dataset_ids
    ]


def _assemble_report(
    facts: _Facts, clock: _Clock, stage_out_record: StageOutRecord | None, error: PilotError | None
) -> BundleReport:
    """The bundle report, from the steps' results; the one place it is built."""
    job, results = facts.job, facts.results
    counts, tasks = count_statuses(results)
    status, code = _verdict(results, counts)
    return BundleReport(
        bundle_id=job.bundle.bundle_id,
        output_run=job.bundle.dbb.output_run,
        status=status,
        exit_code=int(error.exit_code if error is not None else code),
        message=None if error is None else str(error),
        counts=counts,
        tasks=tasks,
        started_at=clock.started_at,
        ended_at=now(),
        wall_seconds=clock.elapsed(),
        workspace=str(job.workspace.root),
        processes=facts.processes,
        workers_replaced=facts.execution.workers_replaced,
        resumed_quanta=len(facts.plan.skipped),
        stage_in=facts.inputs.staged.stats,
        io=dataclasses.asdict(facts.execution.io),
        quanta=results,
        timings=clock.timings(),
        stage_out=stage_out_record,
        **environment(),  # type: ignore[arg-type]
    )


# -- helpers of the steps --------------------------------------------------------------------------


_Status = Literal["succeeded", "partial", "failed", "interrupted"]


def _verdict(results: list[QuantumResult], counts: dict[str, int]) -> tuple[_Status, ExitCode]:
    """The bundle's status and exit code from its quanta's."""
    if any((r.caveat or "").startswith("interrupted") for r in results):
        return "interrupted", ExitCode.INTERRUPTED
    if counts["succeeded"] == len(results):
        return "succeeded", ExitCode.SUCCESS
    return ("failed" if counts["succeeded"] == 0 else "partial"), ExitCode.QUANTA_FAILED


class _Clock:
    """Phase timings of one bundle, marked as the steps end."""

    def __init__(self) -> None:
        self.started_at = now()
        self._start = time.perf_counter()
        self._marks: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self._marks[phase] = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def timings(self) -> dict[str, float]:
        """Seconds per phase; ``bundle_seconds``: bundle loaded to last phase, less the pool wait."""
        out: dict[str, float] = {}
        previous = self._start
        for phase, at in self._marks.items():
            out[phase] = at - previous
            previous = at
        if "load" in self._marks:
            out["bundle_seconds"] = previous - self._marks["load"] - out.get("pool_wait", 0.0)
        return out


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
    execution = bundle.execution
    for where, name in [("activator", execution.activator)] + [
        (f"activators_by_label.{label}", name) for label, name in execution.activators_by_label.items()
    ]:
        try:
            activator_class(name)
        except PluginNotFound as err:
            raise BundleError(f"bundle {bundle.bundle_id}: execution.{where}: {err}") from None
    unknown_labels = sorted(set(execution.activators_by_label) - set(qg.pipeline_graph.tasks))
    if unknown_labels:
        raise BundleError(
            f"bundle {bundle.bundle_id}: execution.activators_by_label names {unknown_labels[0]!r}, "
            "which is not a task label of the quantum graph"
        )
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
