"""What the ``pilot serve`` benchmarks share: synthetic bundles, the server, a throw-away PostgreSQL."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from throwaway_postgres import postgres_server  # noqa: E402  (tests/, as bench_stage_in loads conftest)

TOKEN = "bench-token"


def write_bundles(
    directory: Path, n: int, quanta: int, seconds: Callable[[int], float] | None = None
) -> None:
    """Write ``n`` bundle files of ``quanta`` fake quantum IDs (no graph) into a new ``directory``.

    ``seconds(i)`` is bundle i's ``resources.seconds`` (default ``60 + i % 600``).
    """
    directory.mkdir(parents=True)
    for i in range(n):
        doc = {
            "schema_version": 1,
            "bundle_id": f"bench-b{i:06d}",
            "qgraph": "bench.qg",
            "quantum_ids": [str(uuid.uuid4()) for _ in range(quanta)],
            "dbb": {"repo": str(directory.parent / "dbb"), "output_run": "bench/run"},
            "resources": {"cores": 1 + i % 4, "seconds": seconds(i) if seconds else 60 + i % 600},
        }
        (directory / f"bench-b{i:06d}.json").write_text(json.dumps(doc))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(
    bundle_dir: Path, db: str | None, threads: int, extra: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``pilot serve`` on a free 127.0.0.1 port; yield its URL and process once it listens."""
    token_file = bundle_dir.parent / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    command = [sys.executable, "-m", "pilot.cli", "serve", str(bundle_dir), "--repo", str(bundle_dir.parent)]
    command += ["--token-file", str(token_file), "--port", str(port), "--threads", str(threads)]
    command += ["--db", db] if db else []
    server = subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "queued" in server.stdout.readline(), "pilot serve did not start"
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(timeout=60)


@contextmanager
def pilot_serve(bundle_dir: Path, db: str | None, threads: int) -> Iterator[str]:
    """Run ``pilot serve``; yield its URL."""
    with serve_process(bundle_dir, db, threads) as (url, _):
        yield url


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server (as 'nobody' when run as root); yield its URL."""
    with postgres_server() as (url, _):
        yield url
