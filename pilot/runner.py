"""``pilot run``: one bundle from file to staged outputs and ``report.json``."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal

from lsst.resources import ResourcePath

from activators.base import ActivatorContext
from activators.registry import activator_class

from .bundle_model import load_bundle
from .errors import BundleError, PilotError
from .execution import consumers_of, execute_quanta, execution_order
from .exit_codes import ExitCode
from .interruption import StopRequest
from .qgraph_io import load_bundle_graph
from .report import BundleReport, count_statuses, environment, now
from .stage_in import input_files, stage_in
from .stage_out import produced_refs, stage_out
from .upstream_inputs import fetch_upstream, upstream_refs
from .workspace import Workspace, read_dbb_datastore

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
    bundle_path: str | Path, workspace_dir: Path | None = None, stop: StopRequest | None = None
) -> RunOutcome:
    """Validate, stage in, execute, stage out and report one bundle.

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
    qg = load_bundle_graph(bundle.qgraph_uri(bundle_uri), bundle.quantum_ids)
    if qg.header.output_run != bundle.dbb.output_run:
        raise BundleError(
            f"bundle {bundle.bundle_id}: dbb.output_run {bundle.dbb.output_run!r} does not match the "
            f"quantum graph's output run {qg.header.output_run!r}"
        )
    try:
        cls = activator_class(bundle.execution.activator)
    except LookupError as err:
        raise BundleError(f"bundle {bundle.bundle_id}: execution.activator: {err}") from None
    dbb = read_dbb_datastore(bundle.dbb.repo)
    workspace = Workspace.choose(workspace_dir, bundle.bundle_id)
    local_repo = workspace.write_local_repo_config(dbb)
    quanta = qg.build_execution_quanta(bundle.quantum_ids)
    recorded = input_files(quanta, dbb.name)
    stage_in_stats = stage_in(recorded, dbb, workspace.repo, verify=bundle.staging.verify_checksums)
    missing_upstream = fetch_upstream(
        upstream_refs(quanta, bundle.dbb.output_run, recorded),
        bundle.depends_on,
        bundle.dbb.staging_uri(),
        workspace,
        qg,
        stage_in_stats,
    )
    dataset_types = {d.name: d.dataset_type for d in qg.pipeline_graph.dataset_types.values()}
    activator = cls(
        ActivatorContext(
            local_repo=str(local_repo),
            universe=qg.pipeline_graph.universe,
            dataset_types=dataset_types,
            raise_on_partial_outputs=bundle.execution.raise_on_partial_outputs,
        )
    )
    try:
        results = execute_quanta(
            qg,
            quanta,
            execution_order(qg, bundle.quantum_ids),
            activator,
            fail_fast=bundle.execution.fail_fast,
            unavailable=consumers_of(quanta, missing_upstream),
            stop=stop,
        )
    finally:
        activator.close()
    refs = produced_refs(qg, quanta, results, str(local_repo))
    by_quantum = {ref.id: ref for ref in refs}
    for result in results:
        result.output_dataset_ids = [
            ref.id
            for refs_ in quanta[result.quantum_id].outputs.values()
            for ref in refs_
            if ref.id in by_quantum
        ]
    counts, tasks = count_statuses(results)
    status: Literal["succeeded", "partial", "failed", "interrupted"]
    interrupted = any((r.caveat or "").startswith("interrupted") for r in results)
    if interrupted:
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
        stage_in=stage_in_stats,
        quanta=results,
        **environment(),  # type: ignore[arg-type]
    )
    if bundle.staging.stage_out:
        try:
            report.stage_out = stage_out(
                qg=qg,
                refs=refs,
                bundle_id=bundle.bundle_id,
                output_run=bundle.dbb.output_run,
                local_repo=str(local_repo),
                work_dir=workspace.stage_out_dir,
                report_json=report.model_dump_json(indent=2).encode(),
                staging_root=bundle.dbb.staging_uri(),
            )
        except PilotError as err:
            report.exit_code = int(err.exit_code)
            report.message = str(err)
    report.ended_at = now()
    report.wall_seconds = time.perf_counter() - wall0
    _write_report(report, workspace.report_path)
    return RunOutcome(report, workspace.report_path)


def _write_report(report: BundleReport, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
