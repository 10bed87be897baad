"""A throw-away PostgreSQL server for tests and benchmarks (``initdb`` + ``pg_ctl`` on 127.0.0.1).

Light on imports on purpose: the scheduler benchmarks load it too (with ``tests/`` on
``sys.path``, as they load the WebDAV starter of ``conftest``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def have_postgres() -> bool:
    """Whether the PostgreSQL server binaries are on PATH."""
    return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None


@contextmanager
def postgres_server() -> Iterator[tuple[str, Path]]:
    """Run a PostgreSQL server (as 'nobody' when we are root); yield its URL and data directory.

    The database has ``btree_gist``, which a butler registry needs.
    """
    base = tempfile.mkdtemp(prefix="pilot-pg-")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    as_user = ["su", "nobody", "-s", "/bin/sh", "-c"] if os.geteuid() == 0 else ["/bin/sh", "-c"]
    if os.geteuid() == 0:
        shutil.chown(base, user="nobody")
    data = os.path.join(base, "data")
    subprocess.run([*as_user, f"initdb -D {data} -A trust -U pilot"], check=True, capture_output=True)
    # Two scheduler replicas, each with a pool of 2 × (threads + 2), fit in 200 connections.
    options = f"-p {port} -k {base} -h 127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*as_user, f"pg_ctl -D {data} -o '{options}' -l {base}/log -w start"], check=True, capture_output=True
    )
    try:
        import psycopg

        with psycopg.connect(f"postgresql://pilot@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        yield f"postgresql+psycopg://pilot@127.0.0.1:{port}/postgres", Path(data)
    finally:
        subprocess.run([*as_user, f"pg_ctl -D {data} -m fast stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
