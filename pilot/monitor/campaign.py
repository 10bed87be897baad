"""The campaign per task label: from the committed ``report.json``s of a staging area, plus (in
``pilot serve``) the quanta of queued and running bundles.

Offline (``pilot report --staging``) and online (``GET /v1/report``) go through `CampaignBuilder`,
so both count finished work the same way: each quantum once, a success in any committed
report wins, otherwise the latest committed report says what it is.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from typing import Literal

from lsst.resources import ResourcePath

from stagers.registry import stager_for

from ..protocol import BundleSummary, CampaignReport, FailedQuantum, LogDataset, TaskCounts
from ..report import BundleReport, QuantumResult
from ..staging import area

PendingState = Literal["queued", "running"]


@dataclasses.dataclass
class _Seen:
    result: QuantumResult
    bundle_id: str
    run: str


class CampaignBuilder:
    """Collects committed reports and pending bundles; `build` counts each quantum once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._reports: list[tuple[str, BundleReport]] = []
        self._pending: list[tuple[str, PendingState, dict[uuid.UUID, str]]] = []

    def add_report(self, report: BundleReport, committed_at: str) -> None:
        """A committed bundle report (``committed_at`` orders attempts of the same quanta)."""
        self._reports.append((committed_at, report))

    def add_pending(self, bundle_id: str, state: PendingState, labels: dict[uuid.UUID, str]) -> None:
        """A queued or running bundle: its quanta and their task labels."""
        self._pending.append((bundle_id, state, labels))

    def build(self) -> CampaignReport:
        seen: dict[uuid.UUID, _Seen] = {}
        order: dict[str, None] = {}  # task labels, first seen first
        bundles = []
        for _, report in sorted(self._reports, key=lambda item: item[0]):
            bundles.append(
                BundleSummary(
                    bundle_id=report.bundle_id, state=report.status, host=report.host, counts=report.counts
                )
            )
            for result in report.quanta:
                order.setdefault(result.task_label)
                earlier = seen.get(result.quantum_id)
                if earlier is None or earlier.result.status != "succeeded":
                    seen[result.quantum_id] = _Seen(result, report.bundle_id, report.output_run)
        pending: dict[uuid.UUID, tuple[str, PendingState]] = {}
        for bundle_id, state, labels in self._pending:
            bundles.append(BundleSummary(bundle_id=bundle_id, state=state, counts={state: len(labels)}))
            for quantum_id, label in labels.items():
                order.setdefault(label)
                if quantum_id not in seen or seen[quantum_id].result.status != "succeeded":
                    pending[quantum_id] = (label, state)
        tasks = {label: TaskCounts() for label in order}
        failed = []
        for quantum_id, item in seen.items():
            if quantum_id in pending:
                continue
            counts = tasks[item.result.task_label]
            setattr(counts, item.result.status, getattr(counts, item.result.status) + 1)
            if item.result.status == "failed":
                failed.append(_failure(item))
        for label, state in pending.values():
            setattr(tasks[label], state, getattr(tasks[label], state) + 1)
        rank = {label: i for i, label in enumerate(order)}
        failed.sort(key=lambda f: (rank[f.task_label], sorted(f.data_id.items(), key=str)))
        return CampaignReport(source=self.source, tasks=tasks, bundles=bundles, failed=failed)


def _failure(item: _Seen) -> FailedQuantum:
    result = item.result
    return FailedQuantum(
        task_label=result.task_label,
        data_id=result.data_id,
        quantum_id=result.quantum_id,
        bundle_id=item.bundle_id,
        exception_type=result.exception_type,
        exception_message=result.exception_message,
        attempts=len(result.attempts) + 1,
        log=LogDataset(dataset_type=f"{result.task_label}_log", data_id=result.data_id, run=item.run),
    )


def committed_report(directory: ResourcePath, manifest: area.Manifest) -> BundleReport:
    """The ``report.json`` a committed manifest names."""
    return BundleReport.model_validate_json(stager_for(directory).read(directory.join(manifest.report)))


def from_staging(root: ResourcePath) -> CampaignReport:
    """The campaign as the committed reports under staging area ``root`` tell it."""
    builder = CampaignBuilder(str(root))
    for directory, manifest in area.committed_bundles(root):
        builder.add_report(committed_report(directory, manifest), manifest.committed_at)
    return builder.build()


# -- text ------------------------------------------------------------------------------------------

COLUMNS = (
    ("Succeeded", "succeeded"),
    ("Failed", "failed"),
    ("Blocked", "blocked"),
    ("Not run", "not_run"),
    ("Running", "running"),
    ("Queued", "queued"),
)


def format_report(report: CampaignReport, bundles: bool = False) -> str:
    """``pilot report``'s text: the per-task table, bundles on request, then the failed quanta."""
    rows = []
    for label, counts in report.tasks.items():
        values = [getattr(counts, field) for _, field in COLUMNS]
        rows.append([label, *map(str, values), str(sum(values))])
    totals = [sum(getattr(c, field) for c in report.tasks.values()) for _, field in COLUMNS]
    rows.append(["TOTAL", *map(str, totals), str(sum(totals))])
    parts = [f"campaign: {report.source}", _table(["Task", *(name for name, _ in COLUMNS), "Expected"], rows)]
    if bundles:
        bundle_rows = [
            [b.bundle_id, b.state, b.host or "", " ".join(f"{k}={v}" for k, v in b.counts.items() if v)]
            for b in report.bundles
        ]
        parts.append(_table(["Bundle", "Status", "Host", "Quanta"], bundle_rows))
    if report.failed:
        lines = [f"Failed quanta ({len(report.failed)}):"]
        for f in report.failed:
            data_id = _data_id(f.data_id)
            lines.append(f"  {f.task_label} {data_id} (bundle {f.bundle_id}, attempts {f.attempts})")
            lines.append(f"    {f.exception_type}: {f.exception_message}")
            lines.append(f"    log: {f.log.dataset_type} {data_id} in run {f.log.run}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _data_id(data_id: dict[str, int | str | None]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in data_id.items()) + "}"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])
