"""Prometheus metrics of ``pilot serve`` (``GET /metrics``), in a registry of the app's own.

Request counts and latencies are measured around the app's dispatch; the queue's state
(bundles, quanta, leases, ingest, pilots) is read from the database at each scrape, so
it is right across restarts and with several server processes on one database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .service import Scheduler
from .store import QueueStore
from .tables import bundles, leases, pilots

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUNDLE_STATES = ("queued", "running", "done", "failed", "cancelled")
# Routes measured, by the first path parts that name them (lease and workflow IDs left out).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_LOG = logging.getLogger(__name__)


def route_of(method: str, path: str) -> str:
    """A bounded name for a request's route: ``claim``, ``heartbeat``, ``report``, ... or ``other``."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["v1"] and len(parts) >= 2:
        if parts[1] == "leases" and len(parts) == 4:
            return parts[3] if parts[3] in ("heartbeat", "report", "release") else "other"
        if parts[1] == "workflows":
            return "workflow_" + (parts[3] if len(parts) == 4 else "submit" if method == "POST" else "status")
        return parts[1] if parts[1] in ("claim", "status", "report") else "other"
    if parts[0] in ("metrics", "dashboard"):
        return parts[0]
    return "other"


class Metrics:
    """The registry ``/metrics`` exposes, and the request instruments the app updates."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pilot_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pilot_request_seconds",
            "Time to answer a request, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(QueueCollector(scheduler.store, scheduler.settings.lease_ttl))
        self.registry.register(TaskCollector(scheduler))

    def observe(self, route: str, status: int, started: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class TaskCollector(Collector):
    """``pilot_task_quanta{task,state}`` (the campaign per task label, as ``GET /v1/report`` counts
    it) and the bytes and files finished bundles staged out."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "pilot_task_quanta",
            "Quanta per task label and state: committed reports of finished bundles, quanta of the others.",
            labels=["task", "state"],
        )
        try:
            tasks = self._scheduler.report().tasks
        except Exception as err:  # a bundle whose graph cannot be read: the other metrics still go out
            _LOG.warning("pilot_task_quanta left out: %s: %s", type(err).__name__, err)
            tasks = {}
        for task, counts in tasks.items():
            for state, value in counts.model_dump().items():
                family.add_metric([task, state], value)
        yield family
        files, size = self._scheduler.staged_bytes()
        yield CounterMetricFamily(
            "pilot_staged_bytes",
            "Bytes staged out by finished bundles (their committed reports).",
            value=size,
        )
        yield CounterMetricFamily("pilot_staged_files", "Files staged out by finished bundles.", value=files)


class QueueCollector(Collector):
    """Reads the queue's state from the database at each scrape."""

    def __init__(self, store: QueueStore, lease_ttl: float) -> None:
        self._store = store
        self._alive_within = 2 * lease_ttl  # a pilot heard from within two lease TTLs is alive

    def describe(self) -> list[Metric]:
        return []  # no description up front: collect() would query the database at registration

    def collect(self) -> Iterator[Metric]:
        b = bundles
        with self._store.connect() as conn:
            per_state = self._store.bundle_totals(conn)
            per_label = self._store.job_quanta(conn)
            failed_quanta = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(b.c.failed_quanta), 0))
            ).scalar()
            lease_states: dict[str, int] = dict(
                conn.execute(sa.select(leases.c.state, sa.func.count()).group_by(leases.c.state)).all()
            )
            ingest: dict[str, int] = dict(
                conn.execute(
                    sa.select(b.c.ingest, sa.func.count()).where(b.c.ingest != "none").group_by(b.c.ingest)
                ).all()
            )
            since = time.time() - self._alive_within
            alive = conn.execute(sa.select(sa.func.count()).where(pilots.c.last_seen >= since)).scalar()
            known = conn.execute(sa.select(sa.func.count()).select_from(pilots)).scalar()
        yield from _bundle_families(per_state, per_label, int(failed_quanta or 0))
        expired = CounterMetricFamily("pilot_leases_expired", "Leases that lapsed (their quanta re-queued).")
        expired.add_metric([], float(lease_states.get("expired", 0)))
        yield expired
        active = GaugeMetricFamily("pilot_leases_active", "Leases held by pilots now.")
        active.add_metric([], float(lease_states.get("active", 0)))
        yield active
        backlog = GaugeMetricFamily(
            "pilot_ingest_bundles", "Staged bundles by ingest state (pending: the backlog).", labels=["state"]
        )
        for state in ("pending", "done", "failed"):
            backlog.add_metric([state], float(ingest.get(state, 0)))
        yield backlog
        seen = GaugeMetricFamily("pilot_pilots_alive", "Pilots heard from within two lease TTLs.")
        seen.add_metric([], float(alive or 0))
        yield seen
        total = GaugeMetricFamily("pilot_pilots_known", "Pilots ever seen by this queue.")
        total.add_metric([], float(known or 0))
        yield total


def _bundle_families(
    per_state: dict[str, tuple[int, int]], per_label: list[tuple[str | None, str, int]], failed_quanta: int
) -> Iterator[Metric]:
    by_state = GaugeMetricFamily("pilot_bundles", "Bundles by state (remainders included).", labels=["state"])
    quanta = GaugeMetricFamily(
        "pilot_bundle_quanta",
        "Quanta of the bundles in each state (a remainder's quanta count again).",
        labels=["state"],
    )
    for state in BUNDLE_STATES:
        n_bundles, n_quanta = per_state.get(state, (0, 0))
        by_state.add_metric([state], float(n_bundles))
        quanta.add_metric([state], float(n_quanta))
    yield by_state
    yield quanta
    by_label = GaugeMetricFamily(
        "pilot_job_quanta",
        "Quanta of original bundles by job label (BPS: the cluster or task) and state.",
        labels=["label", "state"],
    )
    for label, state, n in per_label:
        by_label.add_metric([label or "", state], float(n))
    yield by_label
    failed = GaugeMetricFamily("pilot_quanta_failed", "Quanta failed or abandoned in finished bundles.")
    failed.add_metric([], float(failed_quanta))
    yield failed
