#!/usr/bin/env python
"""Stage-in throughput from a loopback WebDAV DBB: the pilot's ``stage_in`` next to a plain loop.

One invocation writes ``--files`` random files of ``--size-mb`` MB under the root of the
test WebDAV server (``tests/webdav_server.py``, wsgidav on cheroot, started as a subprocess
on a free 127.0.0.1 port) and fetches the same files, each time into a fresh empty
directory:

``pilot-pN``
    `pilot.staging.stage_in.stage_in` with ``parallel=N`` (``--parallel``) into a fresh cache and
    workspace, ``verify=True`` (the bundle default);
``pilot-p1``
    the same with ``parallel=1``;
``plain``
    a loop of ``ResourcePath.transfer_from(source, transfer="copy")``, no verification;
``pilot-pN-cached``
    ``stage_in`` again, into a new workspace but ``pilot-pN``'s cache (all cache hits).

Each row reports wall seconds, MB/s (1 MB = 10^6 bytes), CPU seconds of this process and
of the server, and the ratios to ``plain`` and of parallel to serial.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil
from bench_executors import REPO_ROOT, _table, format_machine, machine_facts, to_jsonable
from lsst.daf.butler import Config, DataCoordinate, DatasetRef, DatasetType, DimensionUniverse
from lsst.resources import ResourcePath

from pilot.staging.input_cache import InputCache
from pilot.staging.stage_in import InputFile, stage_in
from pilot.workspace import DBBDatastore

sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import _free_port, start_webdav, stop_process  # noqa: E402

MB = 1e6
RUN_DIR = "bench/run"


@dataclasses.dataclass
class Row:
    """One way of staging the files in, and what it measured."""

    key: str
    seconds: float
    files: int
    bytes: int
    fetched: int
    cache_hits: int
    client_cpu_seconds: float
    server_cpu_seconds: float
    mb_per_s: float = 0.0
    x_plain: float | None = None


def write_files(dav_root: Path, n: int, size: int) -> dict[str, str]:
    """Write ``n`` files of ``size`` random bytes (one buffer, unique 32-byte header); return blake2b."""
    body = bytearray(os.urandom(size))
    directory = dav_root / RUN_DIR
    directory.mkdir(parents=True)
    digests = {}
    for i in range(n):
        body[:32] = os.urandom(32)
        relative = f"{RUN_DIR}/f{i:05d}.dat"
        (dav_root / relative).write_bytes(body)
        digests[relative] = hashlib.blake2b(body).hexdigest()
    return digests


def tree_size(root: Path) -> tuple[int, int]:
    """Data files (not ``.blake2b`` sidecars) under ``root`` and their total bytes."""
    sizes = [p.stat().st_size for p in root.rglob("*.dat") if p.is_file()]
    return len(sizes), sum(sizes)


def measure(key: str, server: psutil.Process, action: Callable[[], tuple[int, int]], dest: Path) -> Row:
    """Time ``action`` (returning files fetched, cache hits); count what landed in ``dest``."""
    cpu0, server0, start = time.process_time(), sum(server.cpu_times()[:2]), time.perf_counter()
    fetched, hits = action()
    seconds = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu0, sum(server.cpu_times()[:2]) - server0
    files, size = tree_size(dest)
    row = Row(key, seconds, files, size, fetched, hits, cpu, server_cpu)
    print(f"  {key}: {seconds:.2f} s, {files} files, {size / MB:.0f} MB", flush=True)
    return row


def run_pilot(
    files: list[InputFile], dbb: DBBDatastore, cache_root: Path, ws: Path, parallel: int
) -> tuple[int, int]:
    """``stage_in`` into ``ws`` through the cache at ``cache_root``."""
    staged = stage_in(files, dbb, ws, InputCache(cache_root, dbb.root), verify=True, parallel=parallel)
    return staged.stats.files, staged.stats.cache_hits


def run_plain(files: list[InputFile], dbb: DBBDatastore, dest: Path) -> tuple[int, int]:
    """A naive job: one ``transfer_from`` per file, no verification."""
    (dest / RUN_DIR).mkdir(parents=True)
    for item in files:
        ResourcePath(dest / item.relative_path).transfer_from(
            dbb.root.join(item.relative_path), transfer="copy"
        )
    return len(files), 0


def derive(rows: list[Row]) -> None:
    """MB/s (bytes delivered into the destination) and the ratio to ``plain``."""
    plain = next(r for r in rows if r.key == "plain")
    for r in rows:
        r.mb_per_s = r.bytes / MB / r.seconds
        r.x_plain = plain.seconds / r.seconds


def format_rows(rows: list[Row]) -> str:
    """The results table."""
    return _table(
        ("way", "s", "MB/s", "x plain", "fetched", "cache hits", "client CPU s", "server CPU s"),
        [
            (
                r.key,
                f"{r.seconds:.2f}",
                f"{r.mb_per_s:.0f}",
                f"{r.x_plain:.2f}",
                str(r.fetched),
                str(r.cache_hits),
                f"{r.client_cpu_seconds:.1f}",
                f"{r.server_cpu_seconds:.1f}",
            )
            for r in rows
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=200, help="Files to stage in.")
    parser.add_argument("--size-mb", type=float, default=5.0, help="Size of each file, MB (10^6 bytes).")
    parser.add_argument("--parallel", type=int, default=8, help="stage_in parallel= of the parallel row.")
    parser.add_argument(
        "--checksum",
        choices=("none", "blake2b"),
        default="none",
        help="Checksum the InputFiles carry: none, or the files' real blake2b (then verified).",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="Empty or new directory (default: temp).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here as JSON.")
    parser.add_argument("--keep", action="store_true", help="Keep the served files and every destination.")
    args = parser.parse_args(argv)
    if args.files < 1 or args.size_mb <= 0 or args.parallel < 2:
        parser.error("--files must be at least 1, --parallel at least 2 and --size-mb positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 if every way delivered every file whole."""
    args = parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-stage-in-"))).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise SystemExit(f"bench_stage_in: --workdir {workdir} is not empty")
    size = int(args.size_mb * MB)
    started = datetime.now(UTC)
    print(f"workdir: {workdir}", flush=True)
    facts = machine_facts(workdir)
    print(format_machine(facts), flush=True)
    if facts["loadavg_at_start"][0] > 0.5:
        print(f"warning: the machine is busy (1-min load {facts['loadavg_at_start'][0]:.2f})", flush=True)

    dav_root = workdir / "dav"
    print(f"writing {args.files} x {size / MB:g} MB ...", flush=True)
    start = time.perf_counter()
    digests = write_files(dav_root, args.files, size)
    write_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for relative in digests:  # what stage_in pays per fetched file, whatever `verify` says
        with open(dav_root / relative, "rb") as stream:
            hashlib.file_digest(stream, "blake2b")
    hash_seconds = time.perf_counter() - start
    os.sync()

    universe = DimensionUniverse()
    ref = DatasetRef(
        DatasetType("bench_input", universe.empty, "StructuredDataDict"),
        DataCoordinate.make_empty(universe),
        run="bench",
    )
    files = [
        InputFile(relative, size, digest if args.checksum == "blake2b" else None, ref)
        for relative, digest in digests.items()
    ]

    port = _free_port()
    server_process = start_webdav(dav_root, port)
    server = psutil.Process(server_process.pid)
    dbb = DBBDatastore("bench", ResourcePath(f"http://127.0.0.1:{port}/", forceDirectory=True), Config())
    p = f"pilot-p{args.parallel}"
    d = {key: workdir / key for key in (p, f"{p}-cached", "pilot-p1", "plain")}
    rows: list[Row] = []
    errors: list[str] = []
    try:
        # The cached row reuses the first row's cache, so it runs right after it.
        steps: list[tuple[str, Callable[[], tuple[int, int]], Path]] = [
            (p, lambda: run_pilot(files, dbb, d[p] / "cache", d[p] / "ws", args.parallel), d[p] / "ws"),
            (
                f"{p}-cached",
                lambda: run_pilot(files, dbb, d[p] / "cache", d[f"{p}-cached"] / "ws", args.parallel),
                d[f"{p}-cached"] / "ws",
            ),
            (
                "pilot-p1",
                lambda: run_pilot(files, dbb, d["pilot-p1"] / "cache", d["pilot-p1"] / "ws", 1),
                d["pilot-p1"] / "ws",
            ),
            ("plain", lambda: run_plain(files, dbb, d["plain"]), d["plain"]),
        ]
        for key, action, dest in steps:
            print(f"running {key} ...", flush=True)
            row = measure(key, server, action, dest)
            rows.append(row)
            expected_fetched = 0 if key.endswith("-cached") else args.files
            if (row.files, row.bytes, row.fetched) != (args.files, args.files * size, expected_fetched):
                errors.append(f"{key}: {row.files} files, {row.bytes} bytes, {row.fetched} fetched")
            os.sync()  # untimed: write back this pass's dirty pages before the next one
            if not args.keep and key in (f"{p}-cached", "pilot-p1", "plain"):
                for path in {d[key], d[p]} if key == f"{p}-cached" else {d[key]}:
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        stop_process(server_process)
        if not args.keep:
            shutil.rmtree(dav_root, ignore_errors=True)

    derive(rows)
    by_key = {r.key: r for r in rows}
    speedup = by_key["pilot-p1"].seconds / by_key[p].seconds
    print()
    print(
        f"{args.files} files x {size / MB:g} MB = {args.files * size / MB:.0f} MB over loopback WebDAV "
        f"(wsgidav), checksum {args.checksum}, verify=True for the pilot"
    )
    print(format_rows(rows))
    print()
    print("x plain = plain's seconds / the row's (> 1: faster than the plain loop)")
    print(f"{p} vs pilot-p1 (parallel / serial speed-up): {speedup:.2f}x")
    print(f"{p}-cached MB/s: bytes linked into the workspace per second (no transfer)")
    print(
        f"blake2b of all files, one thread (stage_in hashes every fetched file): {hash_seconds:.2f} s = "
        f"{args.files * size / MB / hash_seconds:.0f} MB/s; writing them took {write_seconds:.2f} s"
    )
    for error in errors:
        print(f"ERROR: {error}")
    if args.json:
        document = {
            "started_at": started.isoformat(),
            "ended_at": datetime.now(UTC).isoformat(),
            "loadavg_at_end": list(os.getloadavg()),
            "parameters": {
                "files": args.files,
                "size_bytes": size,
                "parallel": args.parallel,
                "checksum": args.checksum,
            },
            "machine": facts,
            "blake2b_seconds": hash_seconds,
            "parallel_vs_serial": speedup,
            "results": rows,
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_jsonable(document), indent=2) + "\n")
        print(f"results: {args.json}")
    if not args.keep:
        with contextlib.suppress(OSError):
            workdir.rmdir()  # everything in it is gone unless --json pointed inside
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
