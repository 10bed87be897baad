"""``pilot serve``: queue a bundle directory and serve it over HTTP with cheroot.

Several ``pilot serve`` processes on one PostgreSQL database (``--db``) act as one
scheduler behind a load balancer: each answers any request, and the leading replica
(`pilot.scheduler.leadership`) sweeps lapsed leases and ingests.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import resource
import signal
import threading
import time
from pathlib import Path

from cheroot import wsgi
from lsst.resources import ResourcePath

from .app import SchedulerApp
from .ingester import Ingester
from .leadership import Leadership
from .loader import load_bundle_dir
from .service import Scheduler, Settings
from .store import QueueStore

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """Where to listen and what to serve."""

    bundle_dir: Path
    repo: str
    token: str
    db: str | None = None  # default sqlite:///<bundle_dir>/scheduler.sqlite3
    host: str = "127.0.0.1"
    port: int = 8470
    threads: int = 8  # measured best of 4/8/16 for 1,000 pilots (benchmarks/bench_pool.py)
    backlog: int = 1024  # the listen queue: a burst of a thousand pilots must not be dropped


def serve(options: ServeOptions, settings: Settings) -> None:
    """Queue the bundles, then answer requests until SIGTERM or SIGINT."""
    options.bundle_dir.mkdir(parents=True, exist_ok=True)
    db = options.db or f"sqlite:///{(options.bundle_dir / 'scheduler.sqlite3').absolute()}"
    remainder_dir = options.bundle_dir.absolute() / "remainders"
    remainder_dir.mkdir(exist_ok=True)
    store = QueueStore(db, pool_size=options.threads + 2)
    scheduler = Scheduler(store, ResourcePath(remainder_dir, forceDirectory=True), settings)
    added, known = load_bundle_dir(scheduler, options.bundle_dir)
    leadership = Leadership(store)
    ingester = Ingester(options.repo, store, scheduler.staging_dir, leads=leadership.held)
    scheduler.on_staged.append(ingester.submit)
    ingester.start()
    ingester.wake()  # bundles staged before a restart, not yet ingested
    stop = threading.Event()
    sweeper = threading.Thread(
        target=_sweep, args=(scheduler, leadership, stop), name="lease-expiry", daemon=True
    )
    sweeper.start()
    server = _http_server(options, SchedulerApp(scheduler, options.token))
    server.prepare()
    host, port = server.bind_addr[:2]
    print(f"pilot serve: {added} bundles queued ({known} known) at http://{host}:{port}/v1/", flush=True)
    # A signal only sets an event; a plain thread stops cheroot.  Raising out of a signal
    # handler could interrupt cheroot while it holds a lock and hang its shutdown.
    signalled = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: signalled.set())
    faulthandler.register(signal.SIGUSR2)  # operators: SIGUSR2 dumps every thread's stack to stderr
    threading.Thread(target=_stop_when, args=(signalled, server), name="shutdown", daemon=True).start()
    try:
        server.serve()
    finally:
        stop.set()
        server.stop()
        ingester.stop()
        leadership.release()
        store.close()


def _http_server(options: ServeOptions, app: SchedulerApp) -> wsgi.Server:
    """cheroot, sized for a pool of pilots that each keep one connection open."""
    server = wsgi.Server((options.host, options.port), app)
    server.numthreads = options.threads
    # cheroot's defaults (a listen backlog of 5, 10 kept-alive connections) drop or close
    # connections of a large pool: a dropped SYN costs the client a 1 s retransmit.  Idle
    # kept-alive connections wait in cheroot's selector, not in a worker thread.
    server.request_queue_size = options.backlog
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per pilot
    server.keep_alive_conn_limit = max(10, min(hard, 65536) - 64)
    # An idle kept-alive connection is closed after this long.  cheroot's 10 s is the pilots'
    # heartbeat interval: the close would race each heartbeat, and the pilot retry it.
    server.timeout = 30
    # Idle keep-alive clients must not hold up a shutdown (cheroot waits this long per thread).
    server.shutdown_timeout = 1
    return server


def _stop_when(signalled: threading.Event, server: wsgi.Server) -> None:
    signalled.wait()
    _LOG.warning("Stopping on a signal.")
    server.stop()


def _sweep(scheduler: Scheduler, leadership: Leadership, stop: threading.Event) -> None:
    """Expire lapsed leases while this replica leads (off the requests' path)."""
    interval = max(0.2, min(5.0, scheduler.settings.lease_ttl / 4))
    while not stop.wait(interval):
        try:
            if leadership.held():
                scheduler.expire_due(time.time())
        except Exception:  # keep sweeping: a database hiccup must not stop expiry for good
            _LOG.exception("Lease expiry sweep failed")
