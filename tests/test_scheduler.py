"""``pilot serve`` and the scheduler client, against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from conftest import TOKEN, Campaign, _free_port, pilot, read_report, serve, wait_for
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

import pilot.glidein.client as glidein_client
import pilot.scheduler.errors as scheduler_errors
from pilot.errors import LeaseGone, SchedulerRejected
from pilot.exit_codes import ExitCode
from pilot.glidein.client import SchedulerAuthError, SchedulerClient
from pilot.protocol import SCHEMA_DIR, Heartbeat, Progress, Release, Report, Slot, json_schemas
from pilot.scheduler import tables
from pilot.scheduler.store import BundleRow, QueueStore
from pilot.staging.area import Manifest


def write_bundles(directory: Path, specs: dict[str, dict]) -> dict[str, list[str]]:
    """Write synthetic bundle files (fake quanta, no graph); return their quantum IDs."""
    directory.mkdir(parents=True, exist_ok=True)
    quanta = {}
    for bundle_id, spec in specs.items():
        ids = [str(uuid.uuid4()) for _ in range(spec.get("n", 3))]
        doc = {
            "schema_version": 1,
            "bundle_id": bundle_id,
            "qgraph": f"{bundle_id}.qg",
            "quantum_ids": ids,
            "depends_on": spec.get("depends_on", []),
            "dbb": {"repo": str(directory.parent / "dbb"), "output_run": "syn/run"},
            "resources": spec.get("resources", {"seconds": 60}),
            "retries": spec.get("retries", {}),
        }
        (directory / f"{bundle_id}.json").write_text(json.dumps(doc))
        quanta[bundle_id] = ids
    return quanta


def client(url: str, token: str = TOKEN) -> SchedulerClient:
    return SchedulerClient(url, token, retries=2, backoff=0.1)


SLOT = Slot(cores=4, memory_mb=8000, walltime_left_s=3600 * 4)


def test_shipped_protocol_schemas_are_current() -> None:
    for name, text in json_schemas().items():
        assert (SCHEMA_DIR / name).read_text() == text, "run: python -m pilot.protocol"


def test_claim_heartbeat_report(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {}, "b": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        claim = c.claim("pilot-1", SLOT)
        assert claim.bundle is not None and claim.lease is not None
        bundle = claim.bundle
        assert bundle["bundle_id"] == "a" and bundle["quantum_ids"] == quanta["a"]
        assert bundle["qgraph"] == (tmp_path / "bundles" / "a.qg").as_uri()  # absolute
        lease = claim.lease.lease_id
        beat = c.heartbeat(lease, Heartbeat(quanta_done=1, quanta_running=2))
        assert beat.expires_at >= claim.lease.expires_at
        final = Report(
            status="succeeded", exit_code=0, succeeded_quantum_ids=bundle["quantum_ids"], staged=False
        )
        answer = c.report(lease, final)
        assert (answer.state, answer.remainder_bundle_id, answer.ingest) == ("done", None, "not_staged")
        assert c.report(lease, final) == answer  # idempotent
        with pytest.raises(LeaseGone):
            c.heartbeat(lease, Heartbeat())
        status = c.status()
        assert status.bundles == {"queued": 1, "running": 0, "done": 1, "failed": 0, "cancelled": 0}
        assert [p.pilot_id for p in status.pilots] == ["pilot-1"]
        assert status.pilots[0].last_heartbeat is not None


def test_wrong_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    write_bundles(tmp_path / "bundles", {"a": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        with pytest.raises(SchedulerAuthError, match="refused the token") as err:
            client(url, "wrong").claim("intruder", SLOT)
        assert err.value.exit_code == ExitCode.AUTH_FAILED
        bare = requests.post(f"{url}/v1/claim", json={"pilot_id": "x", "slot": {"cores": 1}}, timeout=30)
        assert bare.status_code == 401 and "error" in bare.json()
        status = client(url).status()
        assert status.bundles["queued"] == 1 and status.bundles["running"] == 0
        assert status.pilots == []  # not even seen
    with pytest.raises(Exception, match="plain http to scheduler.example.org"):
        SchedulerClient("http://scheduler.example.org:8470", TOKEN)


def test_unreachable_scheduler_exit_code() -> None:
    c = SchedulerClient(f"http://127.0.0.1:{_free_port()}", TOKEN, retries=1, backoff=0.01)
    with pytest.raises(Exception, match="unreachable") as err:
        c.status()
    assert err.value.exit_code == ExitCode.SCHEDULER_UNREACHABLE  # type: ignore[attr-defined]


def test_rejected_requests_exit_20_not_18(tmp_path: Path) -> None:
    write_bundles(tmp_path / "bundles", {"a": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        # A claim whose slot the server's model refuses (built without the client's validation).
        with pytest.raises(SchedulerRejected, match="field 'slot.cores'") as bad_claim:
            c.claim("pilot-1", Slot.model_construct(cores=0))
        claim = c.claim("pilot-1", SLOT)
        assert claim.lease is not None
        stranger = str(uuid.UUID(int=7))
        with pytest.raises(SchedulerRejected, match=f"quantum {stranger} is not in bundle a") as bad_report:
            c.report(
                claim.lease.lease_id,
                Report(status="failed", exit_code=10, failed_quantum_ids=[stranger], staged=False),
            )
    for caught in (bad_claim, bad_report):
        assert type(caught.value) is SchedulerRejected
        assert caught.value.exit_code == ExitCode.SCHEDULER_REJECTED == 20
        assert "\n" not in str(caught.value)


def test_client_and_scheduler_share_one_lease_gone() -> None:
    assert glidein_client.LeaseGone is scheduler_errors.LeaseGone is LeaseGone
    assert issubclass(scheduler_errors.LeaseNotFound, LeaseGone)
    assert scheduler_errors.RequestError is SchedulerRejected and SchedulerRejected.status == 400
    assert (LeaseGone.status, scheduler_errors.LeaseNotFound.status) == (410, 404)


def test_status_shows_each_pilots_progress(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 5}, "b": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        first = c.claim("p1", SLOT)
        c.claim("p2", SLOT)
        c.heartbeat(first.lease.lease_id, Heartbeat(quanta_done=2, quanta_failed=1, quanta_running=1))
        by_pilot = {p.pilot_id: p for p in c.status().pilots}
        assert by_pilot["p1"].bundle_id == "a" and by_pilot["p1"].last_heartbeat is not None
        assert by_pilot["p1"].progress == Progress(quanta_done=2, quanta_failed=1, quanta_running=1)
        assert by_pilot["p2"].bundle_id == "b" and by_pilot["p2"].progress is None  # no heartbeat yet
        c.report(
            first.lease.lease_id,
            Report(status="succeeded", exit_code=0, succeeded_quantum_ids=quanta["a"], staged=False),
        )
        p1 = next(p for p in c.status().pilots if p.pilot_id == "p1")
        assert p1.bundle_id is None and p1.progress is None


def test_failed_quanta_are_retried_until_max_attempts(tmp_path: Path) -> None:
    ids = write_bundles(tmp_path / "bundles", {"a": {"n": 4}})["a"]
    with serve(tmp_path / "bundles", tmp_path / "dbb", "--max-attempts", "2") as url:
        c = client(url)
        first = c.claim("p1", SLOT)
        # ids[0] failed and blocked ids[1]; ids[2] succeeded; ids[3] was not run.
        answer = c.report(
            first.lease.lease_id,
            Report(
                status="partial",
                exit_code=10,
                succeeded_quantum_ids=ids[2:3],
                failed_quantum_ids=ids[:2],
                staged=False,
            ),
        )
        assert (answer.state, answer.remainder_bundle_id) == ("done", "a-r1")
        assert (answer.requeued_quanta, answer.failed_quanta, answer.abandoned_quanta) == (3, 0, 0)
        second = c.claim("p1", SLOT)
        assert second.bundle["bundle_id"] == "a-r1"
        assert second.bundle["quantum_ids"] == [ids[0], ids[1], ids[3]]
        # The second attempt is the last: what fails now stays failed.
        last = c.report(
            second.lease.lease_id,
            Report(
                status="partial",
                exit_code=10,
                succeeded_quantum_ids=ids[3:],
                failed_quantum_ids=ids[:2],
                staged=False,
            ),
        )
        assert (last.state, last.remainder_bundle_id) == ("failed", None)
        assert (last.requeued_quanta, last.failed_quanta, last.abandoned_quanta) == (0, 2, 0)
        assert c.claim("p1", SLOT).no_work
        assert c.status().bundles == {"queued": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 0}


def test_bundles_go_to_slots_they_fit(tmp_path: Path) -> None:
    write_bundles(
        tmp_path / "bundles",
        {
            "hour": {"resources": {"seconds": 3600}},
            "wide": {"resources": {"cores": 8, "seconds": 60}},
            "big": {"resources": {"memory_mb": 16000, "seconds": 60}},
            "many": {"n": 100, "resources": {}},  # 100 quanta x 10 s / 1 core = 1000 s
            "short": {"resources": {"seconds": 300}},
        },
    )
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        ten_minutes = Slot(cores=4, memory_mb=8000, walltime_left_s=600)
        got = c.claim("p", ten_minutes)
        assert got.bundle is not None and got.bundle["bundle_id"] == "short"
        assert c.claim("p", ten_minutes).no_work  # never the hour, the 8 cores, the 16 GB or 1000 s
        assert c.claim("p", Slot(cores=4, memory_mb=8000, walltime_left_s=1200)).bundle["bundle_id"] == "many"
        # Memory and walltime unknown: anything on 4 cores, in queue (file name) order.
        assert c.claim("p", Slot(cores=4)).bundle["bundle_id"] == "big"
        assert c.claim("p", Slot(cores=4)).bundle["bundle_id"] == "hour"
        assert c.claim("p", Slot(cores=4)).no_work
        assert c.claim("p", Slot(cores=8, walltime_left_s=100)).bundle["bundle_id"] == "wide"


def test_bundles_go_to_slots_with_disk_for_them(tmp_path: Path) -> None:
    write_bundles(
        tmp_path / "bundles",
        {
            "big": {"resources": {"disk_mb": 50_000, "seconds": 60}},
            "small": {"resources": {"disk_mb": 2_000, "seconds": 60}},
            "unknown": {"resources": {"seconds": 60}},
        },
    )
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        c = client(url)
        small_disk = Slot(cores=4, memory_mb=8000, disk_mb=10_000)
        assert c.claim("p", small_disk).bundle["bundle_id"] == "small"  # never the 50 GB bundle
        assert c.claim("p", small_disk).bundle["bundle_id"] == "unknown"  # no estimate: no constraint
        assert c.claim("p", small_disk).no_work
        assert c.claim("p", Slot(cores=4)).bundle["bundle_id"] == "big"  # the slot's disk unknown


def test_remainder_keeps_the_disk_estimate(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 4, "resources": {"disk_mb": 5_000}}})
    with serve(tmp_path / "bundles", tmp_path / "dbb", "--lease-ttl", "600") as url:
        c = client(url)
        claim = c.claim("p1", SLOT)
        c.release(claim.lease.lease_id, Release(staged=False))
        assert c.claim("p2", Slot(cores=4, disk_mb=4_000)).no_work
        rest = c.claim("p2", Slot(cores=4, disk_mb=6_000))
        assert rest.bundle["bundle_id"] == "a-r1" and rest.bundle["quantum_ids"] == quanta["a"]
        assert rest.bundle["resources"]["disk_mb"] == 5_000


def test_queue_database_of_an_earlier_version_gains_the_disk_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    earlier = sa.MetaData()
    for table in tables.metadata.sorted_tables:
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if c.name != "disk_mb"
        ]
        sa.Table(table.name, earlier, *columns)
    engine = sa.create_engine(url)
    earlier.create_all(engine)
    engine.dispose()
    store = QueueStore(url)
    try:
        row = BundleRow("a", "file:///a.json", 3, 1, None, 60.0, "a", disk_mb=5_000)
        assert store.add_bundle(row, [])
        assert store.claim("p", Slot(cores=1, disk_mb=4_000), now=0.0, ttl=60) is None
        claimed = store.claim("p", Slot(cores=1, disk_mb=6_000), now=0.0, ttl=60)
        assert claimed is not None and claimed.bundle_id == "a"
        assert store.bundle_row("a") == row
    finally:
        store.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_concurrent_claims_never_share_a_bundle(tmp_path: Path, store: str, request) -> None:  # type: ignore[no-untyped-def]
    n_bundles = 40
    write_bundles(tmp_path / "bundles", {f"b{i:03d}": {} for i in range(n_bundles)})
    db = ["--db", request.getfixturevalue("postgres")] if store == "postgresql" else []
    with serve(tmp_path / "bundles", tmp_path / "dbb", *db) as url:
        claimed: list[str] = []

        def claimer(name: str) -> None:
            c = client(url)
            while (answer := c.claim(name, SLOT)).bundle is not None:
                claimed.append(answer.bundle["bundle_id"])

        threads = [threading.Thread(target=claimer, args=(f"p{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(claimed) == n_bundles and len(set(claimed)) == n_bundles
        assert client(url).status().bundles["running"] == n_bundles


def test_lapsed_lease_requeues_everything_when_nothing_was_staged(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 4}, "down": {"depends_on": ["a"]}})
    with serve(tmp_path / "bundles", tmp_path / "dbb", "--lease-ttl", "0.5") as url:
        c = client(url)
        first = c.claim("doomed", SLOT)
        assert first.bundle["bundle_id"] == "a"
        # The pilot is never heard from again: the lease lapses, all of a's quanta are re-queued.
        again = wait_for(lambda: (r := c.claim("rescuer", SLOT)).bundle and r, "the re-queued bundle")
        assert again.bundle["bundle_id"] == "a-r1"
        assert again.bundle["quantum_ids"] == quanta["a"] and again.bundle["depends_on"] == []
        assert Path(again.bundle["qgraph"].removeprefix("file://")) == tmp_path / "bundles" / "a.qg"
        assert (tmp_path / "bundles" / "remainders" / "a-r1.json").exists()
        with pytest.raises(LeaseGone):
            c.heartbeat(first.lease.lease_id, Heartbeat())
        with pytest.raises(LeaseGone):
            c.report(first.lease.lease_id, Report(status="succeeded", exit_code=0, staged=False))


def _commit_fake_stage_out(staging: Path, bundle_id: str) -> None:
    """A committed manifest without outputs (the synthetic bundles have no graph to run)."""
    (staging / bundle_id).mkdir(parents=True)
    manifest = Manifest(
        bundle_id=bundle_id, output_run="syn/run", attempt="attempt-1", zip=None, report="x", committed_at="t"
    )
    (staging / bundle_id / "manifest.json").write_text(manifest.model_dump_json())


def test_release_makes_a_remainder_reading_the_staged_outputs(tmp_path: Path) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 5}, "down": {"depends_on": ["a"]}})
    staging = tmp_path / "dbb" / "pilot-staging"
    with serve(tmp_path / "bundles", tmp_path / "dbb", "--lease-ttl", "600") as url:
        c = client(url)
        claim = c.claim("p1", SLOT)
        assert claim.bundle["bundle_id"] == "a"
        assert c.claim("p2", SLOT).no_work  # "down" waits for a
        ids = quanta["a"]
        _commit_fake_stage_out(staging, "a")
        drained = c.release(
            claim.lease.lease_id,
            Release(succeeded_quantum_ids=ids[:2], failed_quantum_ids=ids[2:3], staged=True),
        )
        assert (drained.state, drained.remainder_bundle_id, drained.requeued_quanta) == ("failed", "a-r1", 2)
        rest = c.claim("p2", SLOT)  # down still waits: some of a's quanta are in a-r1
        assert rest.bundle["bundle_id"] == "a-r1"
        assert rest.bundle["quantum_ids"] == ids[3:] and rest.bundle["depends_on"] == ["a"]
        assert c.claim("p3", SLOT).no_work
        _commit_fake_stage_out(staging, "a-r1")
        c.report(
            rest.lease.lease_id,
            Report(status="succeeded", exit_code=0, succeeded_quantum_ids=ids[3:], staged=True),
        )
        down = c.claim("p3", SLOT)
        assert down.bundle["bundle_id"] == "down" and down.bundle["depends_on"] == ["a", "a-r1"]


def _labels(qgraph: Path) -> dict[str, str]:
    xgraph = PredictedQuantumGraph.read_execution_quanta(qgraph).quantum_only_xgraph
    return {str(q): xgraph.nodes[q]["task_label"] for q in xgraph}


def _run_claimed(tmp_path: Path, bundle: dict, name: str) -> dict:
    path = tmp_path / "claimed" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(bundle))
    workspace = tmp_path / "ws" / name
    result = pilot("run", path, "--workspace", workspace, "--processes", "0")
    assert result.returncode == 0, result.stderr
    return read_report(workspace)


def test_end_to_end_runs_remainders_and_ingests_once(campaign: Campaign, tmp_path: Path) -> None:
    with serve(campaign.bundles_dir, campaign.repo) as url:
        c = client(url)
        first = c.claim("p1", SLOT)
        bundle = first.bundle
        # The pilot runs only the isr quanta, stages them, and drains.
        labels = _labels(Path(bundle["qgraph"].removeprefix("file://")))
        isr = [q for q in bundle["quantum_ids"] if labels[q] == "isr"]
        report = _run_claimed(tmp_path, {**bundle, "quantum_ids": isr}, "partial")
        assert report["counts"]["succeeded"] == len(isr)
        drained = c.release(first.lease.lease_id, Release(succeeded_quantum_ids=isr, staged=True))
        assert drained.remainder_bundle_id == f"{bundle['bundle_id']}-r1"
        # Everything left, the remainder included, runs; it reads isr outputs from a's zip.
        runs = 0
        while (claim := c.claim("p1", SLOT)).bundle is not None:
            report = _run_claimed(tmp_path, claim.bundle, claim.bundle["bundle_id"])
            done = [q["quantum_id"] for q in report["quanta"] if q["status"] == "succeeded"]
            assert len(done) == len(claim.bundle["quantum_ids"])
            answer = c.report(
                claim.lease.lease_id,
                Report(status="succeeded", exit_code=0, succeeded_quantum_ids=done, staged=True),
            )
            assert answer.state == "done" and answer.remainder_bundle_id is None
            runs += 1
        assert runs == 3  # the remainder and the two other bundles
        status = wait_for(lambda: (s := c.status()).ingest["pending"] == 0 and s, "ingest")
        assert status.ingest == {"pending": 0, "done": 4, "failed": 0}
        assert status.bundles == {"queued": 0, "running": 0, "done": 4, "failed": 0, "cancelled": 0}
    datasets = campaign.datasets_in_run()
    assert len(datasets) == len(set(datasets))
    by_type = {name: sum(1 for n, _ in datasets if n == name) for name in ("postISRCCD", "calexp", "src")}
    assert by_type == {"postISRCCD": 6, "calexp": 6, "src": 6}
    again = pilot("ingest", campaign.repo)
    assert again.returncode == 0 and "nothing new" in again.stdout


class _LosingProxy:
    """A TCP proxy on 127.0.0.1 that drops the answer to the first ``/v1/claim`` it relays.

    The claim reaches the server and is applied; the pilot sees its connection closed with
    no answer, as when a network path fails between the scheduler and a worker node.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client_side, _ = self._listener.accept()
            threading.Thread(target=self._relay, args=(client_side,), daemon=True).start()

    def _relay(self, client_side: socket.socket) -> None:
        with client_side, socket.create_connection(self._upstream) as server_side:
            while request := _read_http_message(client_side):
                server_side.sendall(request)
                answer = _read_http_message(server_side)
                if request.startswith(b"POST /v1/claim") and self.dropped == 0:
                    self.dropped += 1
                    return  # the server applied the claim; the pilot never hears of it
                client_side.sendall(answer)


def _read_http_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (b"" when the peer closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if not (chunk := sock.recv(65536)):
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_claim_whose_answer_is_lost_gets_the_same_bundle_on_retry(tmp_path: Path) -> None:
    write_bundles(tmp_path / "bundles", {"a": {}, "b": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        proxy = _LosingProxy(url)
        answer = client(proxy.url).claim("p1", SLOT)  # the client's transport retries the claim
        assert proxy.dropped == 1 and answer.bundle["bundle_id"] == "a"
        status = client(url).status()
        assert status.bundles["running"] == 1 and status.bundles["queued"] == 1, "a second bundle was leased"
        (leased,) = status.pilots
        assert leased.bundle_id == "a"
        # A new claim is a new key: the next bundle.
        assert client(url).claim("p1", SLOT).bundle["bundle_id"] == "b"
