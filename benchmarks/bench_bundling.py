#!/usr/bin/env python
"""Time ``pilot bundle`` (the real CLI, as a subprocess) on synthetic graphs of 10k, 30k and 100k quanta.

The graphs: a DBB made with ``Butler.makeRepo`` (sqlite, file datastore), instrument
``BenchCam`` with ``--detectors`` detectors (default 100), one physical filter, one day_obs and
V visits, and three chained ``lsst.pipe.base.tests.mocks.DynamicTestPipelineTask``s over
``(instrument, visit, detector)``: ``isr`` (``raw`` → ``postISRCCD``), ``calibrate`` (→
``calexp``), ``measure`` (→ ``src``).  Every quantum chain is one visit-detector of 3 quanta,
so a graph of N quanta has V = round(N / (3 × detectors)) visits (10k → 33 visits, 9,900
quanta; 30k → 100, 30,000; 100k → 333, 99,900).  The ``raw``s are registered in the
registry only (no files: ``pilot bundle`` never reads them), in one ``insertDatasets``;
the graph is built by the real ``AllDimensionsQuantumGraphBuilder`` (through the mocks'
``DirectButlerRepo``), which takes minutes at 100k, so each size's DBB and ``.qg`` are
cached under ``--graph-dir`` (``<graph-dir>/q<N>/``) and reused by later runs.

Each timed run bundles into a fresh copy of the cached DBB (so every run initializes the
output run from scratch) with ``--max-quanta`` (default 300: the issue's 30k graph into 100
bundles).  Reported per size: wall seconds of the ``pilot bundle`` process, its peak RSS
(the child's own rusage from ``os.wait4``), bundles written, seconds until the first
``*.json`` bundle file appeared in the output directory (polled every 10 ms), and the total
bytes of the bundle ``.qg`` files, as a markdown table.  ``python -m pilot.cli`` runs with
this process's working directory first on ``sys.path``: run from the checkout to measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

INSTRUMENT = "BenchCam"
DIMENSIONS = ["instrument", "visit", "detector"]
CHAIN = (("isr", "raw", "postISRCCD"), ("calibrate", "postISRCCD", "calexp"), ("measure", "calexp", "src"))
OUTPUT_RUN = "bench/bundling"
POLL_SECONDS = 0.01


@dataclasses.dataclass
class Result:
    """One timed ``pilot bundle`` run."""

    quanta: int
    wall: float
    peak_rss_mb: float
    bundles: int
    first_bundle: float | None
    qg_bytes: int


def graph_paths(graph_dir: Path, n_quanta: int) -> tuple[Path, Path]:
    """The cached DBB and ``.qg`` for a graph of about ``n_quanta`` quanta."""
    root = graph_dir / f"q{n_quanta}"
    return root / "dbb", root / "graph.qg"


def ensure_graph(graph_dir: Path, n_quanta: int, n_detectors: int) -> tuple[Path, Path]:
    """Build (once) and return the DBB and graph of about ``n_quanta`` quanta."""
    repo, qgraph = graph_paths(graph_dir, n_quanta)
    if qgraph.exists():
        return repo, qgraph
    if repo.exists():
        shutil.rmtree(repo)  # a build that did not finish
    n_visits = max(1, round(n_quanta / (len(CHAIN) * n_detectors)))
    start = time.monotonic()
    _make_dbb(repo, n_visits, n_detectors)
    partial = qgraph.with_name("graph.partial.qg")  # renamed once written: a cache hit is whole
    _build_graph(repo, partial)
    partial.rename(qgraph)
    print(f"built {qgraph} ({n_visits} visits) in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return repo, qgraph


def _make_dbb(repo: Path, n_visits: int, n_detectors: int) -> None:
    """A DBB with the instrument, its detectors and visits, and a registry-only ``raw`` per visit-detector."""
    from lsst.daf.butler import Butler, DataCoordinate, DatasetType
    from lsst.pipe.base.tests.mocks import MockStorageClass

    Butler.makeRepo(str(repo))
    with Butler.from_config(str(repo), writeable=True) as butler:
        insert = butler.registry.insertDimensionData
        insert("instrument", {"name": INSTRUMENT, "detector_max": 1000, "visit_max": 10**6})
        insert("physical_filter", {"instrument": INSTRUMENT, "name": "r_01", "band": "r"})
        insert("day_obs", {"instrument": INSTRUMENT, "id": 20260101})
        insert(
            "detector",
            *[{"instrument": INSTRUMENT, "id": i, "full_name": f"D{i:03d}"} for i in range(n_detectors)],
        )
        insert(
            "visit",
            *[
                {
                    "instrument": INSTRUMENT,
                    "id": v,
                    "name": f"v{v}",
                    "physical_filter": "r_01",
                    "day_obs": 20260101,
                }
                for v in range(n_visits)
            ],
        )
        # The builder attaches a visit_detector_region record to every visit-detector data ID.
        insert(
            "visit_detector_region",
            *[
                {"instrument": INSTRUMENT, "visit": v, "detector": d}
                for v in range(n_visits)
                for d in range(n_detectors)
            ],
        )
        # The mocks' storage class for a connection's default (StructuredDataDict).
        storage_class = MockStorageClass.get_or_register_mock("StructuredDataDict")
        raw = DatasetType("raw", DIMENSIONS, storage_class, universe=butler.dimensions)
        butler.registry.registerDatasetType(raw)
        group = butler.dimensions.conform(DIMENSIONS)
        data_ids = [
            DataCoordinate.standardize(instrument=INSTRUMENT, visit=v, detector=d, dimensions=group)
            for v in range(n_visits)
            for d in range(n_detectors)
        ]
        butler.registry.registerRun("input_run")
        butler.registry.insertDatasets(raw, data_ids, run="input_run")


def _build_graph(repo: Path, qgraph: Path) -> None:
    """Build the 3-task mock pipeline's graph over every visit-detector of ``repo`` and write it."""
    from lsst.daf.butler import Butler
    from lsst.pipe.base.tests.mocks import DirectButlerRepo, DynamicConnectionConfig

    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, use_import_collections_as_input=False, data_root=None)
        for label, source, target in CHAIN:
            mock_repo.add_task(
                label,
                dimensions=DIMENSIONS,
                inputs={"input": DynamicConnectionConfig(dataset_type_name=source, dimensions=DIMENSIONS)},
                outputs={"output": DynamicConnectionConfig(dataset_type_name=target, dimensions=DIMENSIONS)},
            )
        # ``raw`` is registered already, so the helper inserts no mock inputs of its own.
        builder = mock_repo.make_quantum_graph_builder(
            output_run=OUTPUT_RUN, register_output_dataset_types=False
        )
        builder.finish(output="bench", attach_datastore_records=True).write(str(qgraph))


def time_bundle(
    repo: Path, qgraph: Path, workdir: Path, max_quanta: int
) -> tuple[float, float, int, float | None]:
    """Run ``pilot bundle`` on a fresh copy of ``repo``: wall, peak RSS (MB), exit code, first bundle (s)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(repo, workdir / "dbb")
    out = workdir / "bundles"
    command = [sys.executable, "-m", "pilot.cli", "bundle", str(qgraph), "--repo", str(workdir / "dbb")]
    command += ["--out", str(out), "--max-quanta", str(max_quanta)]
    with open(workdir / "bundle.log", "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        first: float | None = None
        while True:
            # wait4 gives this child's own rusage (ru_maxrss in kB on Linux).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.monotonic() - start
            if first is None and out.is_dir() and any(out.glob("*.json")):
                first = now
            if pid:
                break
            time.sleep(POLL_SECONDS)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return now, usage.ru_maxrss / 1024, proc.returncode, first


def measure(graph_dir: Path, workdir: Path, n_quanta: int, n_detectors: int, max_quanta: int) -> Result:
    """Bundle the cached graph of ``n_quanta`` quanta once and describe the run."""
    repo, qgraph = ensure_graph(graph_dir, n_quanta, n_detectors)
    run_dir = workdir / f"q{n_quanta}"
    wall, rss, code, first = time_bundle(repo, qgraph, run_dir, max_quanta)
    if code != 0:
        raise SystemExit(f"pilot bundle failed ({code}); see {run_dir / 'bundle.log'}")
    out = run_dir / "bundles"
    quanta = _n_quanta(qgraph)
    qg_bytes = sum(path.stat().st_size for path in out.glob("*.qg"))
    return Result(quanta, wall, rss, len(list(out.glob("*.json"))), first, qg_bytes)


def _n_quanta(qgraph: Path) -> int:
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

    with PredictedQuantumGraph.open(qgraph) as reader:
        return reader.header.n_quanta


def table(results: Sequence[Result], loads: Sequence[str], full_sizes: dict[int, int]) -> str:
    """The results as a markdown table."""
    lines = [
        "| quanta | bundles | wall (s) | peak RSS (MB) | first bundle (s) | bundle .qg total (MB) "
        "| full .qg (MB) | load before |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r, load in zip(results, loads, strict=True):
        first = f"{r.first_bundle:.1f}" if r.first_bundle is not None else "–"
        lines.append(
            f"| {r.quanta:,} | {r.bundles} | {r.wall:.1f} | {r.peak_rss_mb:.0f} | {first} "
            f"| {r.qg_bytes / 1e6:.1f} | {full_sizes[r.quanta] / 1e6:.1f} | {load} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,30000,100000", help="Comma-separated graph sizes (quanta).")
    parser.add_argument("--graph-dir", type=Path, required=True, help="Cache of built DBBs and graphs.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where bundles go (default: a temp dir).")
    parser.add_argument("--detectors", type=int, default=100, help="Detectors of the instrument.")
    parser.add_argument("--max-quanta", type=int, default=300, help="pilot bundle --max-quanta.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the graphs, time ``pilot bundle`` on each, print a markdown table."""
    args = parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-bundling-"))
    results: list[Result] = []
    loads: list[str] = []
    full_sizes: dict[int, int] = {}
    for size in sizes:
        ensure_graph(args.graph_dir, size, args.detectors)  # build outside the timed part
        loads.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
        result = measure(args.graph_dir, workdir, size, args.detectors, args.max_quanta)
        full_sizes[result.quanta] = graph_paths(args.graph_dir, size)[1].stat().st_size
        results.append(result)
        print(f"{size}: {result}", file=sys.stderr)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"pilot bundle --max-quanta {args.max_quanta}, {stamp}, {os.cpu_count()} cores\n")
    print(table(results, loads, full_sizes))
    print(f"\nbundles and logs in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
