"""``pilot.bps.PilotService``: a ctrl_bps WMS plugin whose "batch system" is ``pilot serve``.

``bps submit`` prepares one bundle per BPS job (`pilot.bps.workflow`) and queues them in a
running ``pilot serve`` (``POST /v1/workflows``); pilots started by glideins (``pilot
start``) claim them like any other bundle, and the scheduler ingests what they stage.
``bps report / status / cancel / restart / ping`` ask the same scheduler.

Where the scheduler is: the submit YAML's ``pilotScheduler: URL`` and ``pilotTokenFile:
PATH``; for the other commands (BPS gives them no YAML) the submit directory's
``pilot_workflow.json`` when the run id is that directory, else ``$PILOT_SCHEDULER_URL``
and ``$PILOT_TOKEN_FILE`` (the names ``pilot start`` reads).  The run id is the workflow
id (BPS's ``uniqProcName``, path-safe).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lsst.ctrl.bps import BaseWmsService, BpsConfig, GenericWorkflow, WmsJobReport, WmsRunReport, WmsStates
from lsst.ctrl.bps.wms_service import WmsSpecificInfo

from ..errors import ConfigError, PilotError
from ..glidein.client import TOKEN_FILE_ENV, SchedulerClient, token_from
from ..protocol import WorkflowStatus
from .workflow import BUNDLE_DIR, WORKFLOW_FILE, PilotWorkflow

_LOG = logging.getLogger(__name__)

SCHEDULER_ENV = "PILOT_SCHEDULER_URL"

_JOB_STATES = {
    "waiting": WmsStates.UNREADY,
    "queued": WmsStates.PENDING,
    "running": WmsStates.RUNNING,
    "done": WmsStates.SUCCEEDED,
    "failed": WmsStates.FAILED,
    "cancelled": WmsStates.DELETED,
}
_RUN_STATES = {
    "running": WmsStates.RUNNING,
    "succeeded": WmsStates.SUCCEEDED,
    "failed": WmsStates.FAILED,
    "cancelled": WmsStates.DELETED,
}


class PilotService(BaseWmsService):
    """Run BPS workflows as pilot bundles through ``pilot serve``."""

    def prepare(
        self, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str | None = None
    ) -> PilotWorkflow:
        if out_prefix is None:
            raise ConfigError("PilotService needs a submit directory (BPS submitPath)")
        service_class = f"{type(self).__module__.rsplit('.', 1)[0]}.{type(self).__name__}"
        workflow = PilotWorkflow.from_generic_workflow(config, generic_workflow, out_prefix, service_class)
        workflow.write(out_prefix)
        return workflow

    def submit(self, workflow: PilotWorkflow, **kwargs: Any) -> None:
        assert workflow.submit is not None
        client = self._client(workflow.submit_path)
        answer = client.submit_workflow(workflow.submit)
        workflow.run_id = answer.workflow_id
        _LOG.info("Workflow %s queued at %s: %s.", answer.workflow_id, client.url, answer.message)

    def restart(self, wms_workflow_id: str) -> tuple[str | None, str | None, str]:
        try:
            client, workflow_id = self._client(wms_workflow_id), _workflow_id(wms_workflow_id)
            answer = client.workflow(workflow_id, "restart")
        except PilotError as err:
            return None, None, str(err)
        return answer.workflow_id, _run_name(wms_workflow_id, answer), answer.message or ""

    def list_submitted_jobs(
        self,
        wms_id: str | None = None,
        user: str | None = None,
        require_bps: bool = True,
        pass_thru: str | None = None,
        is_global: bool = False,
    ) -> list[str]:
        client = self._client(wms_id)
        if wms_id is not None:
            return [client.workflow(_workflow_id(wms_id)).workflow_id]
        return [
            w.workflow_id
            for w in client.workflows().workflows
            if w.state == "running" and (user is None or w.operator == user)
        ]

    def report(
        self,
        wms_workflow_id: str | None = None,
        user: str | None = None,
        hist: float = 0,
        pass_thru: str | None = None,
        is_global: bool = False,
        return_exit_codes: bool = False,
    ) -> tuple[list[WmsRunReport], str]:
        client = self._client(wms_workflow_id)
        if wms_workflow_id is not None:
            status = client.workflow(_workflow_id(wms_workflow_id))
            return [run_report(status, client.url, with_jobs=True)], ""
        reports = [
            run_report(status, client.url, with_jobs=False)
            for status in client.workflows().workflows
            if (user is None or status.operator == user) and (hist or status.state == "running")
        ]
        return reports, ""

    def get_status(
        self, wms_workflow_id: str, hist: float = 1, is_global: bool = False
    ) -> tuple[WmsStates, str]:
        try:
            status = self._client(wms_workflow_id).workflow(_workflow_id(wms_workflow_id))
        except PilotError as err:
            return WmsStates.UNKNOWN, str(err)
        return _RUN_STATES[status.state], ""

    def cancel(self, wms_id: str, pass_thru: str | None = None) -> tuple[bool, str]:
        try:
            answer = self._client(wms_id).workflow(_workflow_id(wms_id), "cancel")
        except PilotError as err:
            return False, str(err)
        return True, answer.message or ""

    def run_submission_checks(self) -> None:
        """Refuse to submit when the scheduler is not configured, reachable and accepting the token."""
        self._client(None).status()

    def ping(self, pass_thru: str | None = None) -> tuple[int, str]:
        try:
            client = self._client(None)
            status = client.status()
        except PilotError as err:
            return 1, str(err)
        return 0, f"pilot serve at {client.url}: {len(status.pilots)} pilots known"

    def _client(self, run_id_or_path: str | None) -> SchedulerClient:
        """A client of the scheduler: from the submit YAML, the submit directory, or the environment."""
        url = token_file = None
        if self.config:
            url = _config_value(self.config, "pilotScheduler")
            token_file = _config_value(self.config, "pilotTokenFile")
        record = _workflow_record(run_id_or_path)
        if record is not None:
            url = url or record.get("scheduler")
            token_file = token_file or record.get("token_file")
        url = url or os.environ.get(SCHEDULER_ENV)
        if not url:
            raise ConfigError(f"no pilot scheduler: set pilotScheduler in the submit YAML or {SCHEDULER_ENV}")
        if token_file is None and not os.environ.get(TOKEN_FILE_ENV):
            raise ConfigError(
                f"no scheduler token: set pilotTokenFile in the submit YAML or {TOKEN_FILE_ENV}"
            )
        return SchedulerClient(url, token_from(token_file), retries=3, backoff=0.5)


def _config_value(config: BpsConfig, key: str) -> str | None:
    found, value = config.search(key, opt={"required": False, "default": None})
    return str(value) if found and value else None


def _workflow_record(run_id_or_path: str | None) -> dict[str, Any] | None:
    """``pilot_workflow.json`` of a submit directory given as the run id, if it is one."""
    if not run_id_or_path:
        return None
    path = Path(run_id_or_path) / WORKFLOW_FILE
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def _workflow_id(run_id_or_path: str) -> str:
    record = _workflow_record(run_id_or_path)
    return str(record["submit"]["workflow_id"]) if record else run_id_or_path


def _run_name(run_id_or_path: str, status: WorkflowStatus) -> str:
    record = _workflow_record(run_id_or_path)
    return str(record["name"]) if record else status.workflow_id


def run_report(status: WorkflowStatus, scheduler: str, *, with_jobs: bool) -> WmsRunReport:
    """A workflow's status as BPS reports it: per job label, per state."""
    job_states = Counter(_JOB_STATES[job.state] for job in status.jobs)
    summary: dict[str, dict[WmsStates, int]] = defaultdict(lambda: dict.fromkeys(WmsStates, 0))
    exit_codes: dict[str, list[int]] = defaultdict(list)
    for job in status.jobs:
        summary[job.label][_JOB_STATES[job.state]] += 1
        if job.exit_code is not None:
            exit_codes[job.label].append(job.exit_code)
    labels = list(dict.fromkeys(job.label for job in status.jobs))
    info = WmsSpecificInfo()
    info.add_message(
        "Scheduler: {url}; staged bundles ingested: {done}, pending: {pending}, failed: {failed}.",
        url=scheduler,
        **status.ingest,
    )
    if status.excluded:
        excluded = ", ".join(f"{label}: {n}" for label, n in status.excluded.items())
        where = Path(status.submit_path or ".") / BUNDLE_DIR / "excluded.jsonl"
        info.add_message(
            "Quanta excluded before bundling (never run): {excluded} (see {where}).",
            excluded=excluded,
            where=str(where),
        )
    return WmsRunReport(
        wms_id=status.workflow_id,
        path=status.submit_path,
        label=status.workflow_id,
        run=status.run,
        project=status.project,
        campaign=status.campaign,
        payload=status.payload,
        operator=status.operator,
        run_summary=";".join(f"{label}:{sum(summary[label].values())}" for label in labels),
        state=_RUN_STATES[status.state],
        jobs=[
            WmsJobReport(wms_id=job.bundle_id, name=job.job_id, label=job.label, state=_JOB_STATES[job.state])
            for job in status.jobs
        ]
        if with_jobs
        else None,
        total_number_jobs=len(status.jobs),
        job_state_counts={state: job_states.get(state, 0) for state in WmsStates},
        job_summary=dict(summary),
        exit_code_summary=dict(exit_codes),
        specific_info=info,
    )
