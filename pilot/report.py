"""The bundle report (``report.json``): per-quantum results, the bundle summary, and the host it ran on."""

from __future__ import annotations

import collections
import dataclasses
import platform
import socket
import sys
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import pydantic

QuantumStatus = Literal["succeeded", "failed", "blocked", "not_run"]


@dataclasses.dataclass
class IoCounts:
    """Bytes moved by a bundle's quanta, as the datastore sees them."""

    bytes_written: int = 0
    files_written: int = 0
    bytes_read: int = 0
    intermediate_bytes_read: int = 0
    datasets_handed_in_memory: int = 0
    transient_datasets_not_written: int = 0

    def add(self, other: IoCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


SOFTWARE = (
    "quanta-pilot",
    "lsst-daf-butler",
    "lsst-pipe-base",
    "lsst-ctrl-mpexec",
    "lsst-resources",
    "astro-metadata-translator",
)


class ObservedInput(pydantic.BaseModel):
    """One raw-like input of a quantum and the ``ObservationInfo`` of its header, or why there is none."""

    dataset_type: str
    dataset_id: uuid.UUID
    info: dict[str, Any] | None = None
    """The translator's own JSON form (``ObservationInfo.to_json``); ``from_simple`` reads it back."""
    datetime_begin: str | None = None
    """``info``'s ``datetime_begin`` (a TAI two-part JD there), as ISO 8601 UTC."""
    datetime_end: str | None = None
    note: str | None = None
    """Why ``info`` is missing: the file has no FITS header, or its header could not be read or translated."""


class ObservationRecord(pydantic.BaseModel):
    """What the quantum's raw-like inputs say about their observation (``pilot/executor/observation.py``)."""

    inputs: list[ObservedInput] = pydantic.Field(default_factory=list)
    note: str | None = None
    """Set when there is nothing to read: ``"no raw-like exposure input"``."""


class QuantumAttempt(pydantic.BaseModel):
    """A failed attempt of a quantum that the pilot then ran again (``pilot.executor.quantum_retry``)."""

    exception_type: str | None = None
    exception_message: str | None = None
    worker: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    wall_seconds: float = 0.0
    max_rss_bytes: int = 0
    memory_factor: float = 1.0
    """Its worker's memory budget, as a multiple of ``--memory-per-worker``."""


def attempt_of(result: QuantumResult, memory_factor: float = 1.0) -> QuantumAttempt:
    """The failed ``result`` as an earlier attempt of its quantum."""
    return QuantumAttempt(
        exception_type=result.exception_type,
        exception_message=result.exception_message,
        worker=result.worker,
        started_at=result.started_at,
        ended_at=result.ended_at,
        wall_seconds=result.wall_seconds,
        max_rss_bytes=result.max_rss_bytes,
        memory_factor=memory_factor,
    )


class QuantumResult(pydantic.BaseModel):
    """What happened to one quantum."""

    quantum_id: uuid.UUID
    task_label: str
    data_id: dict[str, int | str | None]
    status: QuantumStatus
    caveat: str | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    blocked_by: uuid.UUID | None = None
    worker: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0
    resumed: bool = False
    """Finished in an earlier run of this bundle in the same workspace (from its journal)."""
    output_dataset_ids: list[uuid.UUID] = pydantic.Field(default_factory=list)
    exit_code: int | None = None
    """For a task's exception: the exit code pipetask gives it (its class's ``EXIT_CODE``, else 1)."""
    attempts: list[QuantumAttempt] = pydantic.Field(default_factory=list)
    """Earlier attempts of this quantum in this job, each failed (the last one is this result)."""
    observation: ObservationRecord | None = None
    """Filled in by the worker after the quantum ran; ``None`` if no worker finished the quantum
    (blocked, not run, or its worker died)."""


class TransferStats(pydantic.BaseModel):
    """Counts of one direction of data movement."""

    files: int = 0
    bytes: int = 0
    cache_hits: int = 0
    retries: int = 0
    seconds: float = 0.0


class StageOutRecord(pydantic.BaseModel):
    """Where the bundle's outputs were committed in the DBB staging area."""

    manifest: str
    zip: str | None
    files: str | None = None
    n_datasets: int
    transfer: TransferStats


class BundleReport(pydantic.BaseModel):
    """The whole ``report.json``."""

    report_version: Literal[1] = 1
    bundle_id: str
    output_run: str
    status: Literal["succeeded", "partial", "failed", "interrupted"]
    exit_code: int
    message: str | None = None
    counts: dict[str, int]
    tasks: dict[str, dict[str, int]]
    started_at: datetime
    ended_at: datetime
    wall_seconds: float
    host: str
    platform: str
    python: str
    software: dict[str, str]
    workspace: str
    processes: int = 0
    workers_replaced: int = 0
    resumed_quanta: int = 0
    """Quanta not run again because the workspace's journal shows them succeeded."""
    timings: dict[str, float] = pydantic.Field(default_factory=dict)
    io: dict[str, int] = pydantic.Field(default_factory=dict)
    stage_in: TransferStats
    stage_out: StageOutRecord | None = None
    quanta: list[QuantumResult]


def count_statuses(results: list[QuantumResult]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Return ``(counts by status, counts by task then status)``."""
    counts: collections.Counter[str] = collections.Counter(r.status for r in results)
    by_task: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        by_task[r.task_label][r.status] += 1
    statuses = ("succeeded", "failed", "blocked", "not_run")
    return (
        {s: counts.get(s, 0) for s in statuses},
        {label: {s: c.get(s, 0) for s in statuses} for label, c in by_task.items()},
    )


def environment() -> dict[str, object]:
    """Host, platform, Python and package versions for provenance."""
    software = {}
    for name in SOFTWARE:
        try:
            software[name] = version(name)
        except PackageNotFoundError:
            software[name] = "unknown"
    return {
        "host": socket.getfqdn(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "software": software,
    }


def now() -> datetime:
    """Current UTC time."""
    return datetime.now(UTC)
