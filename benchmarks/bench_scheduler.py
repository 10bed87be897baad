"""Load test of ``pilot serve``: many simulated pilots claiming, heartbeating and reporting.

Synthetic bundles (fake quantum IDs, ``resources.seconds`` set, no graph) are queued in a
real ``pilot serve`` on 127.0.0.1; ``--pilots`` simulated pilots (threads spread over
``--procs`` processes, each with the real ``SchedulerClient``) loop claim → heartbeat × H →
report until the queue is empty.  Prints claims/s and the claim latency percentiles per
store (sqlite file; PostgreSQL started from ``initdb``/``pg_ctl`` unless ``--postgres-url``).

    .venv/bin/python benchmarks/bench_scheduler.py --pilots 200 --bundles 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from serve_harness import TOKEN, pilot_serve, postgres, write_bundles

from pilot.glidein.client import SchedulerClient
from pilot.protocol import Heartbeat, Report, Slot


def _pilot(url: str, name: str, heartbeats: int, latencies: list[float], counts: list[int]) -> None:
    client = SchedulerClient(url, TOKEN, retries=5, backoff=0.2, timeout=120)
    slot = Slot(cores=4, memory_mb=16000, walltime_left_s=3600)
    while True:
        start = time.perf_counter()
        answer = client.claim(name, slot)
        latencies.append(time.perf_counter() - start)
        if answer.bundle is None or answer.lease is None:
            break
        for done in range(heartbeats):
            client.heartbeat(answer.lease.lease_id, Heartbeat(quanta_done=done, quanta_running=1))
        ids = answer.bundle["quantum_ids"]
        client.report(
            answer.lease.lease_id,
            Report(status="succeeded", exit_code=0, succeeded_quantum_ids=ids, staged=False),
        )
        counts.append(2 + heartbeats)
    client.close()


def _process(url: str, first: int, n_threads: int, heartbeats: int, out: multiprocessing.Queue) -> None:
    latencies: list[float] = []
    counts: list[int] = []
    threads = [
        threading.Thread(target=_pilot, args=(url, f"pilot-{first + i}", heartbeats, latencies, counts))
        for i in range(n_threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((latencies, len(counts), sum(counts)))


def run_store(name: str, db: str | None, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-sched-{name}-") as tmp:
        bundle_dir = Path(tmp) / "bundles"
        write_bundles(bundle_dir, args.bundles, args.quanta)
        with pilot_serve(bundle_dir, db, args.threads) as url:
            out: multiprocessing.Queue = multiprocessing.Queue()
            per_proc = args.pilots // args.procs
            procs = [
                multiprocessing.Process(
                    target=_process, args=(url, i * per_proc, per_proc, args.heartbeats, out)
                )
                for i in range(args.procs)
            ]
            start = time.perf_counter()
            for proc in procs:
                proc.start()
            results = [out.get() for _ in procs]
            wall = time.perf_counter() - start
            for proc in procs:
                proc.join()
            status = SchedulerClient(url, TOKEN).status()
    latencies = sorted(x for lat, _, _ in results for x in lat)
    claims = sum(n for _, n, _ in results)
    requests = sum(r for _, _, r in results) + len(latencies) - claims  # + the no-work claims
    assert claims == args.bundles and status.bundles["done"] == args.bundles, status
    return {
        "claims": claims,
        "wall_s": wall,
        "claims_per_s": claims / wall,
        "requests_per_s": requests / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", type=int, default=200)
    parser.add_argument("--procs", type=int, default=4, help="client processes the pilots are spread over")
    parser.add_argument("--bundles", type=int, default=2000)
    parser.add_argument("--quanta", type=int, default=20, help="quanta per bundle")
    parser.add_argument("--heartbeats", type=int, default=2, help="heartbeats per claimed bundle")
    parser.add_argument("--threads", type=int, default=32, help="pilot serve --threads")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=None)
    args = parser.parse_args()
    rows = []
    for store in args.stores.split(","):
        if store == "sqlite":
            rows.append(("sqlite", run_store("sqlite", None, args)))
        elif args.postgres_url:
            rows.append(("postgresql", run_store("postgresql", args.postgres_url, args)))
        else:
            with postgres() as url:
                rows.append(("postgresql", run_store("postgresql", url, args)))
    print(
        f"{args.pilots} pilots, {args.bundles} bundles, {args.heartbeats} heartbeats each, "
        f"{os.cpu_count()} cores"
    )
    print("| store | claims | wall s | claims/s | requests/s | claim p50 ms | claim p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store, r in rows:
        print(
            f"| {store} | {r['claims']:.0f} | {r['wall_s']:.1f} | {r['claims_per_s']:.0f} | "
            f"{r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
