"""``GET /metrics`` of a real ``pilot serve``: Prometheus text that agrees with ``/v1/status``."""

from __future__ import annotations

from pathlib import Path

import requests
from conftest import TOKEN, serve
from prometheus_client.parser import text_string_to_metric_families
from test_scheduler import SLOT, client, write_bundles

from pilot.protocol import Heartbeat, Release, Report
from pilot.scheduler.metrics import route_of


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_match_status(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 4}, "b": {"n": 2}, "c": {}, "d": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        first = c.claim("p1", SLOT)
        assert first.lease is not None
        c.heartbeat(first.lease.lease_id, Heartbeat(quanta_done=2))
        c.report(
            first.lease.lease_id,
            Report(status="succeeded", exit_code=0, succeeded_quantum_ids=quanta["a"], staged=False),
        )
        second = c.claim("p2", SLOT)
        assert second.lease is not None
        c.report(
            second.lease.lease_id,
            Report(status="failed", exit_code=10, failed_quantum_ids=quanta["b"], staged=False),
        )
        third = c.claim("p1", SLOT)  # c, still running
        assert third.lease is not None
        c.heartbeat(third.lease.lease_id, Heartbeat(quanta_running=1))
        status = c.status()
        samples = _scrape(url)

        bundles = {dict(k)["state"]: v for k, v in samples["pilot_bundles"].items()}
        assert bundles == {state: float(n) for state, n in status.bundles.items()}
        assert status.bundles["running"] == 1  # the retried remainder of "b" is queued
        quanta_by_state = {dict(k)["state"]: v for k, v in samples["pilot_bundle_quanta"].items()}
        # "b" is done: its failed quanta were handed to a queued remainder (a retry).
        assert quanta_by_state["done"] == 4 + 2 and quanta_by_state["running"] == 3
        assert samples["pilot_pilots_alive"][()] == 2 and samples["pilot_pilots_known"][()] == 2
        assert samples["pilot_leases_active"][()] == 1
        assert samples["pilot_leases_expired_total"][()] == 0
        ingest = {dict(k)["state"]: v for k, v in samples["pilot_ingest_bundles"].items()}
        assert ingest == {state: float(n) for state, n in status.ingest.items()}

        requests_total = samples["pilot_requests_total"]
        assert requests_total[(("code", "200"), ("route", "claim"))] == 3
        assert requests_total[(("code", "200"), ("route", "report"))] == 2
        assert requests_total[(("code", "200"), ("route", "heartbeat"))] == 2
        count = samples["pilot_request_seconds_count"]
        assert count[(("route", "claim"),)] == 3
        assert samples["pilot_request_seconds_sum"][(("route", "claim"),)] > 0

        c.release(third.lease.lease_id, Release(staged=False))
        again = _scrape(url)
        assert again["pilot_bundles"][(("state", "running"),)] == 0
        assert again["pilot_requests_total"][(("code", "200"), ("route", "metrics"))] == 1


def test_metrics_want_the_token(tmp_path: Path) -> None:
    write_bundles(tmp_path / "bundles", {"a": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        bare = requests.get(f"{url}/metrics", timeout=30)
        wrong = requests.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert bare.status_code == wrong.status_code == 401
        assert "pilot_bundles" not in wrong.text
        samples = _scrape(url)
        assert samples["pilot_requests_total"][(("code", "401"), ("route", "metrics"))] == 2


def test_routes_are_bounded() -> None:
    lease = "0" * 32
    assert route_of("POST", f"/v1/leases/{lease}/heartbeat") == "heartbeat"
    assert route_of("POST", f"/v1/leases/{lease}/report") == "report"
    assert route_of("POST", "/v1/claim") == "claim"
    assert route_of("GET", "/v1/workflows/w1") == "workflow_status"
    assert route_of("POST", "/v1/workflows/w1/cancel") == "workflow_cancel"
    assert route_of("POST", "/v1/workflows") == "workflow_submit"
    assert route_of("GET", "/anything/else") == route_of("GET", "/v1/nothing") == "other"
    assert route_of("GET", "/dashboard/data") == "dashboard"
