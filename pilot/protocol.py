"""The scheduler protocol (HTTP + JSON between ``pilot start`` and ``pilot serve``) and its bearer token.

Every path is under ``/v1/`` and every request carries ``Authorization: Bearer <token>``.
The JSON Schemas of these models ship in ``pilot/schemas/protocol/`` (regenerate with
``python -m pilot.protocol``; a test checks they are current).  See ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Literal

import pydantic

from .errors import ConfigError

PROTOCOL_VERSION = "v1"
SCHEMA_DIR = Path(__file__).parent / "schemas" / "protocol"


class _Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Slot(_Message):
    """What the claiming pilot can offer."""

    cores: int = pydantic.Field(ge=1, description="Cores the pilot may use.")
    memory_mb: int | None = pydantic.Field(default=None, ge=0, description="Memory; null = unknown.")
    disk_mb: int | None = pydantic.Field(default=None, ge=0, description="Scratch disk; null = unknown.")
    walltime_left_s: float | None = pydantic.Field(
        default=None, ge=0, description="Seconds the slot has left; null = unknown (no limit)."
    )
    site: str | None = pydantic.Field(default=None, description="Where the pilot runs (informational).")


class ClaimRequest(_Message):
    """``POST /v1/claim``: ask for a bundle that fits the slot."""

    pilot_id: str = pydantic.Field(min_length=1, max_length=200, description="Unique name of the pilot.")
    slot: Slot
    claim_key: str | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "The pilot's own key for this claim (e.g. a random UUID), sent again when the claim is"
            " retried: a claim with a key this pilot used before gets that claim's bundle and lease"
            " back, so a lost answer never leaves a second bundle leased."
        ),
    )


class Lease(_Message):
    """The pilot's hold on a claimed bundle; it lapses unless heartbeats extend it."""

    lease_id: str
    expires_at: str = pydantic.Field(description="UTC time, ISO 8601.")
    ttl_s: float = pydantic.Field(description="Each heartbeat extends the lease by this much.")


class ClaimResponse(_Message):
    """Answer to a claim: a bundle and its lease, or no work (ask again after ``retry_after_s``)."""

    bundle: dict[str, Any] | None = pydantic.Field(
        default=None,
        description="The bundle document (bundle.schema.json), qgraph an absolute URI, depends_on "
        "naming every committed upstream bundle to read inputs from.",
    )
    lease: Lease | None = None
    no_work: bool = False
    retry_after_s: float | None = None

    @pydantic.model_validator(mode="after")
    def _one_answer(self) -> ClaimResponse:
        if self.no_work == (self.bundle is not None) or (self.bundle is None) != (self.lease is None):
            raise ValueError("a claim response has either bundle and lease, or no_work")
        return self


class Progress(_Message):
    """Quanta of the bundle a pilot is running, as its last heartbeat counted them."""

    quanta_done: int = pydantic.Field(default=0, ge=0, description="Quanta that succeeded (not yet staged).")
    quanta_failed: int = pydantic.Field(default=0, ge=0, description="Quanta that failed.")
    quanta_running: int = pydantic.Field(
        default=0, ge=0, description="Quanta started (handed to a worker) and not finished."
    )
    timed_out: list[str] = pydantic.Field(
        default_factory=list,
        description="Quanta failed by their time limit or as hung: '<task> <data ID>: <why>'.",
    )


class Heartbeat(Progress):
    """``POST /v1/leases/{lease_id}/heartbeat``: progress; extends the lease."""

    finished_quantum_ids: list[uuid.UUID] | None = pydantic.Field(
        default=None, description="Quanta finished so far (informational: only a final report counts)."
    )


class HeartbeatResponse(_Message):
    """The lease's new expiry."""

    expires_at: str
    ttl_s: float


class Release(_Message):
    """``POST /v1/leases/{lease_id}/release``: drain; unfinished quanta go back to the queue at once."""

    succeeded_quantum_ids: list[uuid.UUID] = pydantic.Field(default_factory=list)
    failed_quantum_ids: list[uuid.UUID] = pydantic.Field(
        default_factory=list, description="Failed quanta, and the quanta they blocked."
    )
    staged: bool = pydantic.Field(description="A manifest was committed for this bundle's outputs.")


class Report(Release):
    """``POST /v1/leases/{lease_id}/report``: the final, idempotent outcome of a bundle."""

    status: Literal["succeeded", "partial", "failed", "interrupted", "error"] = pydantic.Field(
        description="Bundle status as in report.json; 'error' if it stopped before executing."
    )
    exit_code: int = pydantic.Field(description="The exit code 'pilot run' would have given.")


class FinishResponse(_Message):
    """What the scheduler made of a report or release (the same answer if repeated)."""

    bundle_id: str
    state: Literal["done", "failed"]
    remainder_bundle_id: str | None = pydantic.Field(
        default=None,
        description="The new bundle holding the re-queued quanta: those that neither succeeded nor "
        "failed and, while the bundle has attempts left, the failed ones.",
    )
    requeued_quanta: int = pydantic.Field(default=0, description="Quanta in the remainder bundle.")
    abandoned_quanta: int = pydantic.Field(
        default=0, description="Unfinished quanta not re-queued: their bundle used up its attempts."
    )
    failed_quanta: int = pydantic.Field(
        default=0,
        description="Failed quanta (with those they blocked) left failed: their bundle used up its "
        "attempts, or they failed in a released bundle.",
    )
    ingest: Literal["queued", "not_staged"]


class PilotStatus(_Message):
    """One pilot as the scheduler last heard from it."""

    pilot_id: str
    last_seen: str
    last_heartbeat: str | None
    bundle_id: str | None = pydantic.Field(description="Bundle it holds a lease on, if any.")
    progress: Progress | None = pydantic.Field(
        default=None,
        description="That bundle's quanta as of the last heartbeat for it; null before the first "
        "heartbeat or without a lease.",
    )


class StatusResponse(_Message):
    """``GET /v1/status``."""

    bundles: dict[str, int] = pydantic.Field(description="Bundles per state: queued, running, done, failed.")
    waiting: int = pydantic.Field(description="Queued bundles whose upstream bundles are not finished.")
    ingest: dict[str, int] = pydantic.Field(description="Staged bundles: ingested, pending, failed.")
    pilots: list[PilotStatus]


class WorkflowBundle(_Message):
    """One bundle file of a submitted workflow."""

    path: str = pydantic.Field(description="Absolute URI of the bundle file, as the scheduler reads it.")
    label: str = pydantic.Field(min_length=1, description="Job label it reports under (BPS: the cluster).")


class WorkflowSubmit(_Message):
    """``POST /v1/workflows``: queue a workflow's bundles (idempotent: known bundles are kept)."""

    workflow_id: str = pydantic.Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Unique, path-safe workflow name."
    )
    run: str = pydantic.Field(description="Output RUN collection.")
    submit_path: str | None = pydantic.Field(default=None, description="Where its files were prepared.")
    operator: str | None = None
    project: str | None = None
    campaign: str | None = None
    payload: str | None = None
    bundles: list[WorkflowBundle] = pydantic.Field(
        description="Bundle files, upstream before downstream; depends_on names bundles of this list."
    )
    excluded: dict[str, int] = pydantic.Field(
        default_factory=dict, description="Quanta excluded before bundling, per task label (never run)."
    )


class JobStatus(_Message):
    """One job of a workflow: an original bundle and the remainders that re-ran its quanta."""

    job_id: str = pydantic.Field(description="The original bundle's id.")
    label: str
    state: Literal["waiting", "queued", "running", "done", "failed", "cancelled"] = pydantic.Field(
        description="The state of its latest bundle; 'waiting': queued behind unfinished upstream bundles."
    )
    bundle_id: str = pydantic.Field(description="Its latest bundle (the job itself or a remainder).")
    attempts: int = pydantic.Field(description="Attempts that counted against its retries.")
    quanta: int = pydantic.Field(description="Quanta of the original bundle.")
    failed_quanta: int = pydantic.Field(description="Quanta left failed (or blocked) by its latest bundle.")
    exit_code: int | None = pydantic.Field(
        default=None, description="Exit code of the latest report of a failed job ('pilot run' codes)."
    )


class WorkflowStatus(_Message):
    """``GET /v1/workflows/{workflow_id}``, and the answer to submit, cancel and restart."""

    workflow_id: str
    run: str
    state: Literal["running", "succeeded", "failed", "cancelled"] = pydantic.Field(
        description="running: a job is queued or running, or an ingest pending; else by its jobs."
    )
    submit_path: str | None = None
    operator: str | None = None
    project: str | None = None
    campaign: str | None = None
    payload: str | None = None
    submitted_at: str
    jobs: list[JobStatus]
    excluded: dict[str, int] = pydantic.Field(default_factory=dict)
    ingest: dict[str, int] = pydantic.Field(description="Its staged bundles: ingested, pending, failed.")
    message: str | None = pydantic.Field(default=None, description="What a cancel or restart did.")


class WorkflowList(_Message):
    """``GET /v1/workflows``: every workflow, oldest first, without their jobs."""

    workflows: list[WorkflowStatus]


class TaskCounts(_Message):
    """Quanta of one task label by state (words as ``pipetask report``'s where it has them)."""

    succeeded: int = 0
    failed: int = 0
    blocked: int = pydantic.Field(default=0, description="Not run: an upstream quantum failed.")
    not_run: int = pydantic.Field(default=0, description="In a committed report but not run (interrupted).")
    running: int = pydantic.Field(default=0, description="In a bundle a pilot holds a lease on.")
    queued: int = pydantic.Field(default=0, description="In a queued bundle (also those waiting upstream).")


class LogDataset(_Message):
    """Where a quantum's log is: the ``<label>_log`` dataset of its data ID in its run."""

    dataset_type: str
    data_id: dict[str, int | str | None]
    run: str


class FailedQuantum(_Message):
    """A quantum whose latest committed attempt failed."""

    task_label: str
    data_id: dict[str, int | str | None]
    quantum_id: uuid.UUID
    bundle_id: str
    exception_type: str | None = None
    exception_message: str | None = None
    attempts: int = pydantic.Field(default=1, description="Attempts in its last bundle, this one included.")
    log: LogDataset


class BundleSummary(_Message):
    """One bundle: its committed report's status and counts, or its queue state."""

    bundle_id: str
    state: str = pydantic.Field(
        description="Report status (succeeded, partial, failed, interrupted), or "
        "queued / running for a bundle without a finished report."
    )
    host: str | None = None
    counts: dict[str, int] = pydantic.Field(description="Quanta by state.")


class CampaignReport(_Message):
    """``GET /v1/report`` and ``pilot report --json``: the campaign per task label.

    Each quantum counts once: a success in any committed report wins; otherwise its latest
    committed report; a quantum of a queued or running bundle counts as such (online only).
    """

    source: str = pydantic.Field(description="The scheduler URL or staging area read.")
    tasks: dict[str, TaskCounts]
    bundles: list[BundleSummary]
    failed: list[FailedQuantum]


class ErrorResponse(_Message):
    """Body of every 4xx/5xx answer."""

    error: str


MESSAGES: dict[str, type[pydantic.BaseModel]] = {
    "claim-request": ClaimRequest,
    "claim-response": ClaimResponse,
    "heartbeat-request": Heartbeat,
    "heartbeat-response": HeartbeatResponse,
    "report-request": Report,
    "release-request": Release,
    "finish-response": FinishResponse,
    "status-response": StatusResponse,
    "workflow-submit-request": WorkflowSubmit,
    "workflow-status-response": WorkflowStatus,
    "workflow-list-response": WorkflowList,
    "report-response": CampaignReport,
    "error-response": ErrorResponse,
}


def json_schemas() -> dict[str, str]:
    """Return ``{file name: schema text}`` as shipped in ``pilot/schemas/protocol/``."""
    out = {}
    for name, model in MESSAGES.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://quanta-pilot/schemas/protocol/{PROTOCOL_VERSION}/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def read_token(path: str | Path) -> str:
    """Return the token in ``path`` (surrounding whitespace stripped).

    Raises
    ------
    ConfigError
        The file is missing, unreadable or empty.
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror or err}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} must hold one token (non-empty, no whitespace)")
    return token


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, text in json_schemas().items():
        (SCHEMA_DIR / file_name).write_text(text)
    print(f"wrote {len(MESSAGES)} schemas to {SCHEMA_DIR}")
