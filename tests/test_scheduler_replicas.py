"""Two ``pilot serve`` replicas on one PostgreSQL database act as one scheduler.

Real server processes on 127.0.0.1, a real PostgreSQL server, real pilots: claims are
exactly-once across replicas, a retried claim (same key) gets the same lease on either
replica, one replica at a time sweeps and ingests, and the other takes over when it dies.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psutil
import requests
from conftest import TOKEN, make_campaign, pilot, serve_process, wait_for
from test_glidein import SLOW_CHAIN, _all_ingested, _assert_each_dataset_once, _finish, _start
from test_scheduler import SLOT, _commit_fake_stage_out, client, write_bundles

from pilot.exit_codes import ExitCode
from pilot.protocol import Report

LEADS = "This replica leads"


def _replicas(
    stack: ExitStack, bundles: Path, repo: Path, db: str, *args: str, log_level: str = "WARNING"
) -> list[tuple[str, Path]]:
    """Start replicas a and b on one database; return (url, log) of each."""
    started = []
    for name in ("a", "b"):
        log = f"serve-{name}.log"
        url, _ = stack.enter_context(
            serve_process(bundles, repo, "--db", db, *args, log_name=log, log_level=log_level)
        )
        started.append((url, bundles.parent / log))
    return started


def _leader(replicas: list[tuple[str, Path]]) -> int:
    """The index of the replica whose log says it leads (waiting for one to); asserts only one does."""
    wait_for(lambda: any(LEADS in log.read_text() for _, log in replicas), "a replica to take the lead")
    leading = [i for i, (_, log) in enumerate(replicas) if LEADS in log.read_text()]
    assert len(leading) == 1, "two replicas lead at once"
    return leading[0]


def test_claims_are_exactly_once_across_replicas(tmp_path: Path, postgres: str) -> None:
    specs: dict[str, dict] = {f"b{i:03d}": {"n": 2} for i in range(40)}
    specs |= {f"down{i}": {"n": 1, "depends_on": [f"b{i:03d}", f"b{i + 1:03d}"]} for i in range(0, 20, 2)}
    quanta = write_bundles(tmp_path / "bundles", specs)
    with ExitStack() as stack:
        # Both replicas load the same bundle directory into the one database at start.
        urls = [url for url, _ in _replicas(stack, tmp_path / "bundles", tmp_path / "dbb", postgres)]
        handed: list[tuple[str, str]] = []  # (bundle, lease) of every claim answered with a bundle
        lock = threading.Lock()

        def pilot_loop(index: int) -> None:
            clients = [client(url) for url in urls]  # each request goes to the other replica
            turn = index
            while clients[0].status().bundles["done"] < len(specs):
                answer = clients[turn % 2].claim(f"pilot{index}", SLOT)
                turn += 1
                if answer.bundle is None:
                    threading.Event().wait(0.05)
                    continue
                bundle_id, lease_id = answer.bundle["bundle_id"], answer.lease.lease_id
                with lock:
                    handed.append((bundle_id, lease_id))
                done = Report(
                    status="succeeded", exit_code=0, staged=False, succeeded_quantum_ids=quanta[bundle_id]
                )
                assert clients[turn % 2].report(lease_id, done).state == "done"
                turn += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(pilot_loop, range(8)))
        handed_ids = [bundle_id for bundle_id, _ in handed]
        assert sorted(handed_ids) == sorted(specs), "a bundle was handed out twice or never"
        for url in urls:
            status = client(url).status()
            assert status.bundles["done"] == len(specs) and status.bundles["running"] == 0
            assert {p.pilot_id for p in status.pilots} == {f"pilot{i}" for i in range(8)}


def test_a_retried_claim_gets_its_lease_back_on_either_replica(tmp_path: Path, postgres: str) -> None:
    write_bundles(tmp_path / "bundles", {f"b{i}": {} for i in range(6)})
    with ExitStack() as stack:
        urls = [url for url, _ in _replicas(stack, tmp_path / "bundles", tmp_path / "dbb", postgres)]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = {"pilot_id": "p1", "slot": SLOT.model_dump(), "claim_key": "k-1"}

        def post(i: int, claim: dict) -> dict:
            answer = requests.post(f"{urls[i % 2]}/v1/claim", json=claim, headers=headers, timeout=60)
            assert answer.status_code == 200, answer.text
            return answer.json()

        # The same claim sent eight times at once, half to each replica: one lease.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8), [body] * 8))
        assert len({a["lease"]["lease_id"] for a in answers}) == 1
        assert len({a["bundle"]["bundle_id"] for a in answers}) == 1
        # A new key is a new claim; the same key from another pilot is that pilot's own.
        second = post(1, body | {"claim_key": "k-2"})
        other = post(0, body | {"pilot_id": "p2"})
        held = {
            answers[0]["bundle"]["bundle_id"],
            second["bundle"]["bundle_id"],
            other["bundle"]["bundle_id"],
        }
        assert len(held) == 3
        for url in urls:
            assert client(url).status().bundles == {
                "queued": 3,
                "running": 3,
                "done": 0,
                "failed": 0,
                "cancelled": 0,
            }


def test_the_lead_moves_when_the_leader_dies(tmp_path: Path, postgres: str) -> None:
    quanta = write_bundles(tmp_path / "bundles", {"a": {"n": 2}})
    with ExitStack() as stack:
        replicas = _replicas(stack, tmp_path / "bundles", tmp_path / "dbb", postgres, "--lease-ttl", "3")
        leader = _leader(replicas)
        survivor = client(replicas[1 - leader][0])
        # The leader dies without a word: its database session ends and with it the lead.
        os.kill(_pid_on(replicas[leader][0]), signal.SIGKILL)
        # A pilot that claims on the survivor and is never heard from again: its lease lapses
        # and the survivor, leading now, sweeps it; the bundle is re-queued as a remainder.
        assert survivor.claim("doomed", SLOT).bundle["bundle_id"] == "a"
        rescued = wait_for(
            lambda: (r := survivor.claim("rescuer", SLOT)).bundle and r, "the lapsed lease swept"
        )
        assert rescued.bundle["bundle_id"] == "a-r1"
        # A staged report to the survivor is taken up by its ingester (the fake stage-out has
        # no outputs, so the ingest fails, but it left the pending state: someone ingested).
        _commit_fake_stage_out(tmp_path / "dbb" / "pilot-staging", "a-r1")
        done = Report(status="succeeded", exit_code=0, succeeded_quantum_ids=quanta["a"], staged=True)
        survivor.report(rescued.lease.lease_id, done)
        wait_for(
            lambda: survivor.status().ingest["pending"] == 0, "the staged bundle taken up by the ingester"
        )
        assert LEADS in replicas[1 - leader][1].read_text()


def _pid_on(url: str) -> int:
    """The process listening on ``url``'s port (the serve process started for it)."""
    port = int(url.rsplit(":", 1)[1])
    (pid,) = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == "LISTEN"
    }
    return pid


def test_real_pilots_spread_over_two_replicas_ingest_once(tmp_path: Path, postgres: str) -> None:
    camp = make_campaign(tmp_path, SLOW_CHAIN, n_detectors=6)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "3")
    assert result.returncode == 0, result.stderr
    n_bundles = len(camp.bundle_files())
    with ExitStack() as stack:
        replicas = _replicas(stack, camp.bundles_dir, camp.repo, postgres, log_level="INFO")
        pilots = [
            _start(url, tmp_path / f"pilot{i}", "--idle-timeout", "4") for i, (url, _) in enumerate(replicas)
        ]
        for code, _, stderr in map(_finish, pilots):
            assert code == ExitCode.SUCCESS, stderr
        wait_for(lambda: _all_ingested(replicas[0][0], n_bundles), "every bundle done and ingested")
        leader = _leader(replicas)
        ingested = [log.read_text().count(": ingested ") for _, log in replicas]
        assert ingested[leader] > 0 and ingested[1 - leader] == 0, "the follower ingested"
    _assert_each_dataset_once(camp, 18)
