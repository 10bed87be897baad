"""Glidein-pool load simulation against ``pilot serve``: many pilots, one asyncio process.

Each simulated pilot is a coroutine with one persistent HTTP/1.1 keep-alive connection
(asyncio streams, reopened when the server closes it).  It starts somewhere in the
``--ramp``, claims, "runs" the bundle for its ``resources.seconds`` (seed-determined in
``--duration``) with a heartbeat every ``--heartbeat`` s, reports every quantum succeeded,
and claims again; after ``no_work`` it waits ``retry_after_s`` (at most ``--max-wait``).
The run ends when every bundle is reported.  Per store it prints request rates, latency
percentiles, connection trouble, the exactly-once accounting and the generator's own
lateness and CPU; exit status 1 if the accounting fails.  See benchmarks/README.md.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py --store sqlite
    PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py --store sqlite --pilots 50 --bundles 100 \
        --heartbeat 2 --duration 1 3 --ramp 2 --max-wait 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from serve_harness import TOKEN, postgres_server, serve_process, write_bundles

from pilot.protocol import ClaimRequest

HAS_CLAIM_KEY = "claim_key" in ClaimRequest.model_fields
KINDS = ("claim", "heartbeat", "report", "claim-lost")
REMAINDER = re.compile(r"-r\d+$")
GONE = (404, 410)


class ConnectionLost(Exception):
    """An attempt failed on the connection (connect, reset, early EOF, timeout)."""


@dataclasses.dataclass
class Config:
    """What the simulated pool does."""

    servers: list[tuple[str, int]]
    pilots: int
    bundles: int
    heartbeat: float
    ramp: float
    max_wait: float
    lose: float
    timeout: float
    retries: int
    backoff: float
    seed: int
    time_limit: float


@dataclasses.dataclass
class Stats:
    """Everything the pilots measured (one event loop: no locks needed)."""

    latency: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {k: [] for k in KINDS})
    lateness: list[float] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)  # connect / reset / eof / timeout
    http: Counter[int] = dataclasses.field(default_factory=Counter)  # non-200 answers
    retried: Counter[str] = dataclasses.field(default_factory=Counter)  # attempts repeated, per kind
    connections: int = 0  # TCP connections opened
    reconnects: int = 0  # of which by a pilot that had one before
    server_closes: int = 0  # answers with "Connection: close"
    idle_closes: int = 0  # kept-alive connections found closed by the server before reuse
    lost_responses: int = 0  # claim answers dropped on purpose
    connect: list[float] = dataclasses.field(default_factory=list)  # seconds to open each connection
    listen: dict[str, int] = dataclasses.field(default_factory=dict)  # kernel listen-queue drops
    no_work: int = 0
    skipped_beats: int = 0  # heartbeats not sent: the previous one ended after their time
    lease_gone: int = 0  # 404/410 on a heartbeat or report
    handouts: defaultdict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    reports: Counter[str] = dataclasses.field(default_factory=Counter)
    bad_finish: list[str] = dataclasses.field(default_factory=list)
    roots_done: set[str] = dataclasses.field(default_factory=set)
    failures: list[str] = dataclasses.field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0  # generator process CPU seconds over the run
    server_cpu: float = 0.0
    db_cpu: float = 0.0


class Connection:
    """One pilot's keep-alive HTTP/1.1 connection, reopened when it is closed."""

    def __init__(self, host: str, port: int, stats: Stats, timeout: float) -> None:
        self.host, self.port, self.stats, self.timeout = host, port, stats, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ever_opened = False
        self._head = f"Host: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            if not self._reader.at_eof() and not self._writer.is_closing():
                return self._reader, self._writer
            self.stats.idle_closes += 1
            self.close()
        start = time.perf_counter()
        try:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except OSError as err:
            self.stats.errors["connect"] += 1
            raise ConnectionLost(f"connect: {err}") from None
        self.stats.connect.append(time.perf_counter() - start)
        self.stats.connections += 1
        self.stats.reconnects += self._ever_opened
        self._ever_opened = True
        return self._reader, self._writer

    async def request(self, path: str, body: bytes, lose: bool = False) -> tuple[int, bytes]:
        """POST ``body``; return the status and body.  ``lose``: close once sent, read nothing."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                head = f"POST {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                if lose:
                    self.stats.lost_responses += 1
                    self.close()
                    raise ConnectionLost("response dropped on purpose")
                status, close, data = await _read_response(reader)
        except TimeoutError:
            self.stats.errors["timeout"] += 1
            self.close()
            raise ConnectionLost("timeout") from None
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as err:
            early_eof = isinstance(err, asyncio.IncompleteReadError | EOFError)
            self.stats.errors["eof" if early_eof else "reset"] += 1
            self.close()
            raise ConnectionLost(f"{type(err).__name__}: {err}") from None
        if close:
            self.stats.server_closes += 1
            self.close()
        return status, data


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Read one response: status, whether the server closes the connection, body."""
    line = await reader.readline()
    if not line:
        raise EOFError("connection closed before the response")
    version, status = line.split(None, 2)[:2]
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise EOFError("connection closed in the headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    close = headers.get("connection") == "close" or version == b"HTTP/1.0"
    if "content-length" in headers:
        return int(status), close, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        return int(status), close, b"".join(chunks)
    return int(status), True, await reader.read()


async def call(
    conn: Connection, cfg: Config, kind: str, path: str, doc: dict[str, Any], lose: bool = False
) -> tuple[int, dict[str, Any]]:
    """POST ``doc``, retrying connection errors and 5xx like the real client; record the latency.

    The same body (so the same ``claim_key``) is sent on every attempt.  A response dropped on
    purpose is retried at once and timed as ``claim-lost``.
    """
    body = json.dumps(doc).encode()
    start = time.perf_counter()
    for attempt in range(cfg.retries + 1):
        try:
            status, data = await conn.request(path, body, lose=lose and attempt == 0)
        except ConnectionLost as err:
            if attempt == cfg.retries:
                raise RuntimeError(f"{kind} failed {attempt + 1} times, last: {err}") from None
            conn.stats.retried[kind] += 1
            await asyncio.sleep(0 if lose and attempt == 0 else cfg.backoff * 2**attempt)
            continue
        if status != 200:
            conn.stats.http[status] += 1
        if status >= 500 and attempt < cfg.retries:
            conn.stats.retried[kind] += 1
            await asyncio.sleep(cfg.backoff * 2**attempt)
            continue
        conn.stats.latency["claim-lost" if lose else kind].append(time.perf_counter() - start)
        return status, json.loads(data) if data else {}
    raise AssertionError("unreachable")


async def sleep_until(stats: Stats, when: float) -> None:
    """Sleep until loop time ``when``; record how late the timer woke us (if we slept)."""
    loop = asyncio.get_running_loop()
    if when <= loop.time():
        return
    await asyncio.sleep(when - loop.time())
    stats.lateness.append(loop.time() - when)


async def pilot(i: int, cfg: Config, stats: Stats, done: asyncio.Event, t0: float) -> None:
    """One simulated pilot: claim, run, report, until every bundle is reported."""
    host, port = cfg.servers[i % len(cfg.servers)]
    conn = Connection(host, port, stats, cfg.timeout)
    rng = random.Random(f"{cfg.seed}-pilot-{i}")
    await sleep_until(stats, t0 + cfg.ramp * i / cfg.pilots)
    try:
        while not done.is_set():
            doc: dict[str, Any] = {"pilot_id": f"sim-{i:05d}", "slot": {"cores": 4, "memory_mb": 16000}}
            if HAS_CLAIM_KEY:
                doc["claim_key"] = uuid.uuid4().hex
            lose = cfg.lose > 0 and rng.random() < cfg.lose
            status, answer = await call(conn, cfg, "claim", "/v1/claim", doc, lose)
            if status != 200:
                raise RuntimeError(f"claim answered {status}: {answer}")
            if answer.get("bundle") is None:
                stats.no_work += 1
                wait = min(answer.get("retry_after_s") or cfg.max_wait, cfg.max_wait)
                await sleep_until(stats, asyncio.get_running_loop().time() + wait)
                continue
            await run_bundle(conn, cfg, answer, done)
    finally:
        conn.close()


async def run_bundle(conn: Connection, cfg: Config, answer: dict[str, Any], done: asyncio.Event) -> None:
    """Hold the bundle for its seconds with heartbeats on a fixed grid, then report it."""
    stats, loop = conn.stats, asyncio.get_running_loop()
    bundle, lease_id = answer["bundle"], answer["lease"]["lease_id"]
    bundle_id, quanta = bundle["bundle_id"], bundle["quantum_ids"]
    stats.handouts[bundle_id].append(lease_id)
    start = loop.time()
    end, beat = start + float(bundle["resources"]["seconds"]), start + cfg.heartbeat
    while beat < end:
        await sleep_until(stats, beat)
        progress = {"quanta_done": 0, "quanta_running": len(quanta)}
        status, _ = await call(conn, cfg, "heartbeat", f"/v1/leases/{lease_id}/heartbeat", progress)
        if status in GONE:
            stats.lease_gone += 1
            return
        beat += cfg.heartbeat
        while beat < min(end, loop.time()):
            beat += cfg.heartbeat
            stats.skipped_beats += 1
    await sleep_until(stats, end)
    report = {"status": "succeeded", "exit_code": 0, "succeeded_quantum_ids": quanta, "staged": False}
    status, finish = await call(conn, cfg, "report", f"/v1/leases/{lease_id}/report", report)
    if status in GONE:
        stats.lease_gone += 1
        return
    stats.reports[bundle_id] += 1
    if status != 200 or finish.get("bundle_id") != bundle_id or finish.get("state") != "done":
        stats.bad_finish.append(f"{bundle_id}: {status} {finish}")
    stats.roots_done.add(REMAINDER.sub("", bundle_id))
    if len(stats.roots_done) == cfg.bundles:
        done.set()


async def run_pool(cfg: Config, server_cpu: Callable[[], float], db_cpu: Callable[[], float]) -> Stats:
    """Run every pilot until all bundles are reported (or one fails, or the time limit)."""
    stats, done = Stats(), asyncio.Event()
    t0 = asyncio.get_running_loop().time() + 0.05
    tasks = [asyncio.create_task(pilot(i, cfg, stats, done, t0)) for i in range(cfg.pilots)]
    cpu0, server0, db0 = time.process_time(), server_cpu(), db_cpu()
    start = time.perf_counter()
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait([waiter, *tasks], timeout=cfg.time_limit, return_when=asyncio.FIRST_COMPLETED)
    stats.wall = time.perf_counter() - start
    stats.cpu = time.process_time() - cpu0
    stats.server_cpu, stats.db_cpu = server_cpu() - server0, db_cpu() - db0
    if not done.is_set():
        left = cfg.bundles - len(stats.roots_done)
        stats.failures.append(f"{left} bundles unreported when the run stopped")
    for task in [waiter, *tasks]:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            stats.failures.append(f"pilot failed: {type(result).__name__}: {result}")
    return stats


def check(stats: Stats, status: dict[str, Any], cfg: Config) -> tuple[list[str], dict[str, int]]:
    """The exactly-once accounting: problems (empty if all is well) and the counts behind them."""
    problems = list(stats.failures) + stats.bad_finish[:5]
    for bundle_id, leases in sorted(stats.handouts.items()):
        if len(set(leases)) > 1:
            problems.append(f"{bundle_id} handed out under {len(set(leases))} different leases")
        if stats.reports[bundle_id] != 1 and not stats.lease_gone:
            problems.append(f"{bundle_id} reported {stats.reports[bundle_id]} times")
    expected = {f"bench-b{i:06d}" for i in range(cfg.bundles)}
    if stats.roots_done != expected:
        problems.append(f"{len(expected - stats.roots_done)} bundles never reported")
    remainders = sum(bool(REMAINDER.search(b)) for b in stats.handouts)
    server = status.get("bundles", {})
    leaked = sum(server.values()) - cfg.bundles  # remainders written after a lapsed lease
    leaks_expected = cfg.lose > 0 and not HAS_CLAIM_KEY
    if (leaked or remainders) and not leaks_expected:
        problems.append(f"{leaked} leases lapsed on the server ({remainders} remainders claimed)")
    if server.get("queued", 0) or server.get("running", 0) or server.get("failed", 0):
        problems.append(f"server bundle states at the end: {server}")
    if stats.lease_gone:
        problems.append(f"{stats.lease_gone} heartbeats or reports found their lease gone")
    counts = {
        "bundles_queued": cfg.bundles,
        "bundle_ids_handed_out": len(stats.handouts),
        "originals_handed_out": len(stats.handouts) - remainders,
        "handouts": sum(len(v) for v in stats.handouts.values()),
        "repeated_handouts_same_lease": sum(len(v) - len(set(v)) for v in stats.handouts.values()),
        "reports": sum(stats.reports.values()),
        "remainders_claimed": remainders,
        "leaked_leases": leaked,
        "server_done": server.get("done", 0),
    }
    return problems, counts


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and their live descendants (and reaped children of each)."""
    total = 0.0
    for pid in pids:
        try:
            top = psutil.Process(pid)
            times = top.cpu_times()
            total += times.children_user + times.children_system
            for proc in [top, *top.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def listen_drops() -> dict[str, int]:
    """The kernel's ListenOverflows and ListenDrops counters (whole machine; {} if unreadable)."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names[0] == "TcpExt:":
            table = dict(zip(names[1:], map(int, values[1:]), strict=False))
            return {k: table[k] for k in ("ListenOverflows", "ListenDrops") if k in table}
    return {}


def fetch_status(url: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return dict(json.loads(answer.read()))


def bundle_seconds(args: argparse.Namespace) -> Callable[[int], float]:
    low, high = args.duration
    return lambda i: round(random.Random(f"{args.seed}-bundle-{i}").uniform(low, high), 2)


def run_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    """Queue the bundles in ``store``, start the server(s), run the pool; return the results."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-pool-{store}-")))
        bundle_dir = tmp / "bundles"
        write_bundles(bundle_dir, args.bundles, args.quanta, seconds=bundle_seconds(args))
        db, db_pids = None, []
        if store == "postgres":
            db, data = stack.enter_context(postgres_server())
            db_pids = [int((data / "postmaster.pid").read_text().split()[0])]
        extra = [*(["--lease-ttl", str(args.lease_ttl)] if args.lease_ttl else []), *args.serve_arg]
        servers = [
            stack.enter_context(serve_process(bundle_dir, db, args.threads, extra))
            for _ in range(args.replicas if store == "postgres" else 1)
        ]
        cfg = Config(
            servers=[(urlsplit(url).hostname or "", urlsplit(url).port or 0) for url, _ in servers],
            pilots=args.pilots,
            bundles=args.bundles,
            heartbeat=args.heartbeat,
            ramp=args.ramp,
            max_wait=args.max_wait,
            lose=args.lose_claim_responses,
            timeout=args.timeout,
            retries=args.retries,
            backoff=args.backoff,
            seed=args.seed,
            time_limit=args.time_limit,
        )
        server_pids = [proc.pid for _, proc in servers]
        before = listen_drops()
        stats = asyncio.run(run_pool(cfg, lambda: tree_cpu(server_pids), lambda: tree_cpu(db_pids)))
        stats.listen = {k: v - before.get(k, 0) for k, v in listen_drops().items()}
        status = fetch_status(servers[0][0])
    problems, counts = check(stats, status, cfg)
    return summarize(store, stats, problems, counts, len(servers))


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 (nearest rank) and max, in milliseconds; None when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    rank = {q: ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))] for q in (50, 95, 99)}
    return {**{f"p{q}_ms": 1000 * v for q, v in rank.items()}, "max_ms": 1000 * ordered[-1]}


def summarize(
    store: str, stats: Stats, problems: list[str], counts: dict[str, int], replicas: int
) -> dict[str, Any]:
    """The JSON record of one store's run."""
    wall = stats.wall or float("nan")
    return {
        "store": store,
        "replicas": replicas,
        "wall_s": stats.wall,
        "requests": {
            kind: {"n": len(lat), "per_s": len(lat) / wall, **percentiles(lat)}
            for kind, lat in stats.latency.items()
        },
        "connect": {"n": len(stats.connect), **percentiles(stats.connect)},
        "listen_queue": stats.listen,
        "no_work_claims": stats.no_work,
        "connections": {
            "opened": stats.connections,
            "reconnects": stats.reconnects,
            "server_closes": stats.server_closes,
            "idle_closes": stats.idle_closes,
            "errors": dict(stats.errors),
            "retried": dict(stats.retried),
            "lost_responses": stats.lost_responses,
        },
        "http_errors": {str(k): v for k, v in stats.http.items()},
        "skipped_heartbeats": stats.skipped_beats,
        "accounting": counts,
        "problems": problems,
        "generator": {
            "timers": len(stats.lateness),
            **{k.replace("_ms", "_late_ms"): v for k, v in percentiles(stats.lateness).items()},
            "cpu_s": stats.cpu,
            "cpu_percent": 100 * stats.cpu / wall,
        },
        "server_cpu_percent": 100 * stats.server_cpu / wall,
        "db_cpu_percent": 100 * stats.db_cpu / wall if store == "postgres" else None,
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def print_store(result: dict[str, Any], args: argparse.Namespace) -> None:
    """One store's results as markdown tables."""
    low, high = args.duration
    print(
        f"\n### {result['store']} ({result['replicas']} server(s), --threads {args.threads}): "
        f"{args.pilots} pilots, {args.bundles} bundles of {low:g}–{high:g} s, "
        f"heartbeat {args.heartbeat:g} s, ramp {args.ramp:g} s, "
        f"lost claim responses {args.lose_claim_responses:g}, claim_key {HAS_CLAIM_KEY}\n"
    )
    print("| request | n | per s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, r in result["requests"].items():
        if r["n"] or kind != "claim-lost":
            print(
                f"| {kind} | {r['n']} | {r['per_s']:.1f} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                f"{_ms(r['p99_ms'])} | {_ms(r['max_ms'])} |"
            )
    k = result["connect"]
    print(
        f"| (connect) | {k['n']} | – | {_ms(k['p50_ms'])} | {_ms(k['p95_ms'])} | {_ms(k['p99_ms'])} | "
        f"{_ms(k['max_ms'])} |"
    )
    c, a, g = result["connections"], result["accounting"], result["generator"]
    errors = sum(c["errors"].values())
    db = "–" if result["db_cpu_percent"] is None else f"{result['db_cpu_percent']:.0f}"
    print(
        "\n| wall s | claimed / queued | no-work claims | conns opened | reconnects | server closes "
        "| idle closes | conn errors | listen overflows | lost responses | leaked | gen late p50/p99/max ms "
        "| gen CPU % | server CPU % | db CPU % |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['wall_s']:.1f} | {a['originals_handed_out']} / {a['bundles_queued']} | "
        f"{result['no_work_claims']} | {c['opened']} | {c['reconnects']} | {c['server_closes']} | "
        f"{c['idle_closes']} | {errors} {dict(c['errors']) or ''} | "
        f"{result['listen_queue'].get('ListenOverflows', '–')} | {c['lost_responses']} | "
        f"{a['leaked_leases']} | "
        f"{_ms(g['p50_late_ms'])} / {_ms(g['p99_late_ms'])} / {_ms(g['max_late_ms'])} | "
        f"{g['cpu_percent']:.0f} | {result['server_cpu_percent']:.0f} | {db} |"
    )
    verdict = (
        "exactly once: OK"
        if not result["problems"]
        else "ACCOUNTING FAILED:\n  " + "\n  ".join(result["problems"][:20])
    )
    print(f"\n{verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--pilots", type=int, default=1000)
    add("--bundles", type=int, default=3000)
    add("--quanta", type=int, default=1, help="quanta per bundle")
    add("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    add("--duration", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"), help="bundle seconds")
    add("--ramp", type=float, default=10.0, help="pilot start times spread over this many seconds")
    add("--max-wait", type=float, default=10.0, help="cap on the retry_after_s waited after no_work")
    add("--store", choices=("sqlite", "postgres", "both"), default="both")
    add("--replicas", type=int, default=1, help="pilot serve processes on one PostgreSQL database")
    add("--threads", type=int, default=8, help="pilot serve --threads")
    add("--lease-ttl", type=float, default=None, help="pilot serve --lease-ttl (default: the server's)")
    add("--serve-arg", action="append", default=[], help="extra argument for pilot serve (repeatable)")
    add("--lose-claim-responses", type=float, default=0.0, metavar="P", help="fraction of claim answers lost")
    add("--timeout", type=float, default=30.0, help="seconds per request attempt")
    add("--retries", type=int, default=5, help="retries of a request after connection errors or 5xx")
    add("--backoff", type=float, default=0.5, help="first retry delay (doubles each time)")
    add("--seed", type=int, default=0)
    add("--time-limit", type=float, default=3600.0, help="give up (and fail) after this many seconds")
    add("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.replicas > 1 and args.store != "postgres":
        parser.error("--replicas needs --store postgres")
    return args


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": commit,
        "loadavg_at_start": os.getloadavg(),
        "claim_key": HAS_CLAIM_KEY,
    }


def main() -> int:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    info = machine()
    print(f"{info['cpus']} cores, load average {' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}")
    if args.lose_claim_responses and not HAS_CLAIM_KEY:
        print("ClaimRequest has no claim_key: a lost claim response leaks its bundle until the lease lapses")
    results = []
    for store in ("sqlite", "postgres") if args.store == "both" else (args.store,):
        results.append(run_store(store, args))
        print_store(results[-1], args)
    info["loadavg_at_end"] = os.getloadavg()
    if args.json:
        doc = {"parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        args.json.write_text(json.dumps({**doc, "machine": info, "results": results}, indent=2) + "\n")
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
