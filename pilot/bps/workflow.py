"""A BPS GenericWorkflow as pilot bundles: one bundle per job, its BPS requests carried along.

``bps submit`` with ``wmsServiceClass: pilot.bps.PilotService`` calls
`PilotWorkflow.from_generic_workflow` in its prepare stage.  Each job of the workflow (a
BPS cluster of quanta; pack chains with BPS's own clustering, e.g. by detector) becomes a
bundle of the same quanta, depending on the bundles of its parent jobs.  BPS's per-job
values, already resolved from the submit YAML's scopes (global, ``pipetask.<label>``,
``cluster.<name>``, ``site.<name>``), go into the bundle:

===================  ===============================================================
BPS job value        bundle
===================  ===============================================================
``requestCpus``      ``resources.cores`` and ``execution.processes`` (warm workers)
``requestMemory``    ``resources.memory_mb``; per worker ``execution.memory_per_worker``
``requestDisk``      ``resources.disk_mb``
``requestWalltime``  ``resources.seconds`` (BPS gives minutes)
``numberOfRetries``  ``execution.retries`` (in the job) and ``retries.max_attempts`` = retries + 1
``retryUnlessExit``  ``retries.retry_unless_exit``
``memoryMultiplier`` ``execution.memory_multiplier`` and ``retries.memory_multiplier``
``pilotActivator``   ``execution.activators_by_label`` (scoped per ``pipetask.<label>``)
``pilotActivatorSettings`` ``execution.activator_settings`` (e.g. ``exec: {commands: …}``)
``pilotLocalRepo``   ``execution.local_repo`` (``qbb`` or ``sqlite``)
===================  ===============================================================

The ``pipetaskInit`` job is not a bundle: the run is initialized in the DBB here, as
``pilot bundle`` does.  Nor is the final job: the scheduler ingests what pilots stage.
``pipetask: {<label>: {pilotExclude: "<where>"}}`` leaves out that task's matching quanta
and everything downstream of them (`pilot.central.exclusion`); a job left with no quanta
is dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx
from lsst.ctrl.bps import BaseWmsWorkflow, BpsConfig, GenericWorkflow, GenericWorkflowJob

from ..bundle_model import ExecutionSpec, ResourceEstimate, RetryPolicy
from ..central.bundling import (
    BundleSettings,
    PreparedGraph,
    bundle_prefix,
    prepare_graph,
    write_bundles,
    write_excluded,
)
from ..central.chains import BundlePlan
from ..errors import ConfigError
from ..protocol import WorkflowBundle, WorkflowSubmit

_LOG = logging.getLogger(__name__)

INIT_LABEL = "pipetaskInit"
WORKFLOW_FILE = "pilot_workflow.json"
"""Written in the submit directory: the submitted workflow and where its scheduler is (never a token)."""
BUNDLE_DIR = "pilot-bundles"


class PilotWorkflow(BaseWmsWorkflow):
    """A workflow prepared for ``pilot serve``: its bundle files and the request submitting them."""

    def __init__(self, name: str, config: BpsConfig) -> None:
        super().__init__(name, config)
        self.submit: WorkflowSubmit | None = None

    @classmethod
    def from_generic_workflow(
        cls, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str, service_class: str
    ) -> PilotWorkflow:
        workflow = cls(generic_workflow.name, config)
        workflow.service_class = service_class
        workflow.submit_path = out_prefix
        qgraph = _workflow_qgraph(generic_workflow)
        labels = {
            label for name in generic_workflow for label in generic_workflow.get_job(name).quanta_counts
        }
        exclude = _exclusions(config, labels)
        staging = _search(config, "pilotStaging")
        prepared = prepare_graph(qgraph, config["butlerConfig"], staging=staging, exclude=exclude)
        out_dir = Path(out_prefix) / BUNDLE_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        write_excluded(out_dir, prepared.excluded)
        workflow_id = bundle_prefix(generic_workflow.name)
        bundles = _bundles_of_jobs(generic_workflow, prepared, workflow_id, activation_of(config, labels))
        paths = write_bundles(
            prepared, out_dir, [(name, plan, settings) for name, plan, settings, _ in bundles]
        )
        attrs = generic_workflow.run_attrs
        workflow.submit = WorkflowSubmit(
            workflow_id=workflow_id,
            run=prepared.dbb.output_run,
            submit_path=out_prefix,
            operator=attrs.get("bps_operator") or None,
            project=attrs.get("bps_project") or None,
            campaign=attrs.get("bps_campaign") or None,
            payload=attrs.get("bps_payload") or None,
            bundles=[
                WorkflowBundle(path=path.absolute().as_uri(), label=label)
                for path, (_, _, _, label) in zip(paths, bundles, strict=True)
            ],
            excluded=dict(Counter(item.task_label for item in prepared.excluded)),
        )
        return workflow

    def write(self, out_prefix: str) -> None:
        """Write ``pilot_workflow.json``: the submit request, read back by ``bps restart``/``report``."""
        assert self.submit is not None
        record: dict[str, Any] = {"name": self.name, "submit": self.submit.model_dump(mode="json")}
        for field, key in (("scheduler", "pilotScheduler"), ("token_file", "pilotTokenFile")):
            if value := _search(self.config, key):
                record[field] = str(Path(value).absolute()) if field == "token_file" else value
        (Path(out_prefix) / WORKFLOW_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _workflow_qgraph(generic_workflow: GenericWorkflow) -> str:
    """The whole workflow's quantum graph file, as BPS hands it to every job."""
    for name in generic_workflow:
        for gwfile in generic_workflow.get_job_inputs(name):
            if gwfile.name == "runQgraphFile" and gwfile.src_uri:
                return gwfile.src_uri
    raise ConfigError(f"BPS workflow {generic_workflow.name} names no quantum graph file (runQgraphFile)")


def _search(config: BpsConfig, key: str, label: str | None = None) -> Any:
    opt: dict[str, Any] = {"required": False, "default": None}
    if label is not None:
        opt["curvals"] = {"curr_pipetask": label}
    found, value = config.search(key, opt=opt)
    return value if found and value not in ("", None) else None


def _exclusions(config: BpsConfig, labels: Iterable[str]) -> dict[str, str]:
    """``pilotExclude`` per task label, from the ``pipetask.<label>`` scope."""
    return {label: where for label in sorted(labels) if (where := _search(config, "pilotExclude", label))}


def _bundles_of_jobs(
    generic_workflow: GenericWorkflow, prepared: PreparedGraph, workflow_id: str, activation: Activation
) -> list[tuple[str, BundlePlan, BundleSettings, str]]:
    """``(bundle name, plan, settings, job label)`` per job with quanta left, parents first."""
    kept = set(prepared.xgraph)
    index_of: dict[str, int] = {}
    out: list[tuple[str, BundlePlan, BundleSettings, str]] = []
    for name in networkx.lexicographical_topological_sort(generic_workflow):
        job = generic_workflow.get_job(name)
        if not isinstance(job, GenericWorkflowJob) or job.label == INIT_LABEL:
            continue
        ids = [q for q in _node_ids(job) if q in kept]
        if not ids:
            _LOG.info("BPS job %s has no quanta left after exclusions; it is not submitted.", name)
            continue
        parents = {index_of[p] for p in generic_workflow.predecessors(name) if p in index_of}
        index_of[name] = len(out)
        settings = _settings(job, activation)
        out.append((_bundle_name(workflow_id, name), BundlePlan(ids, parents), settings, job.label))
    return out


def _node_ids(job: GenericWorkflowJob) -> list[uuid.UUID]:
    value = job.cmdvals.get("qgraphNodeId", "")
    parts = value if isinstance(value, list) else str(value).split(",")
    return [uuid.UUID(str(part).strip()) for part in parts if str(part).strip()]


def _bundle_name(workflow_id: str, job_name: str) -> str:
    """``<workflow>-<job>``, path-safe, at most 128 characters (long names end in a hash)."""
    name = bundle_prefix(f"{workflow_id}-{job_name}")
    if len(name) <= 128:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
    return f"{name[:115]}-{digest}"


@dataclasses.dataclass(frozen=True)
class Activation:
    """How the workflow's quanta run: ``pilotActivator`` per task label, and its settings."""

    by_label: dict[str, str] = dataclasses.field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    local_repo: str = "qbb"


def activation_of(config: BpsConfig, labels: Iterable[str]) -> Activation:
    """``pipetask.<label>.pilotActivator``, ``pilotActivatorSettings`` and ``pilotLocalRepo``."""
    by_label = {label: name for label in sorted(labels) if (name := _search(config, "pilotActivator", label))}
    settings = _search(config, "pilotActivatorSettings")
    as_dict = settings.toDict() if hasattr(settings, "toDict") else dict(settings or {})
    return Activation(by_label, as_dict, _search(config, "pilotLocalRepo") or "qbb")


def _settings(job: GenericWorkflowJob, activation: Activation = Activation()) -> BundleSettings:
    cores = max(1, int(job.request_cpus or 1))
    memory = int(job.request_memory) if job.request_memory else None
    walltime = float(job.request_walltime) * 60 if job.request_walltime else None
    unless = job.retry_unless_exit
    multiplier = float(job.memory_multiplier) if job.memory_multiplier else None
    return BundleSettings(
        execution=ExecutionSpec(
            processes=cores,
            memory_per_worker=f"{memory // cores}MiB" if memory else None,
            retries=1 if job.number_of_retries is None else int(job.number_of_retries),
            memory_multiplier=multiplier if multiplier and multiplier > 1 else 2.0,
            activators_by_label={
                label: name for label, name in activation.by_label.items() if label in job.quanta_counts
            },
            activator_settings=activation.settings,
            local_repo=activation.local_repo,  # type: ignore[arg-type]
        ),
        resources=ResourceEstimate(
            cores=cores,
            memory_mb=memory,
            disk_mb=int(job.request_disk) if job.request_disk else None,
            seconds=walltime,
        ),
        retries=RetryPolicy(
            max_attempts=None if job.number_of_retries is None else int(job.number_of_retries) + 1,
            retry_unless_exit=[]
            if unless is None
            else ([unless] if isinstance(unless, int) else list(unless)),
            memory_multiplier=multiplier if multiplier and multiplier > 1 else None,
        ),
    )
