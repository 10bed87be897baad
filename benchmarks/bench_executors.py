#!/usr/bin/env python
"""Run quanta-pilot and stock ``pipetask`` executors on the same quantum graph, side by side.

One invocation builds a fresh DBB (demo instrument, ``--data-ids`` detectors, one ``raw``
array of ``--payload`` bytes each), a quantum graph of ``--tasks`` chained
:class:`pilot.demo.probe_tasks.PayloadTask` tasks, and one copy of the DBB per executor, then
runs each executor as a real subprocess timed from outside:

``pilot``
    ``pilot bundle`` (one bundle, timed but not counted) then ``pilot run`` (timed), with
    ``--processes N`` only if ``pilot run --help`` offers it.
``pilot-nohash``
    The same, with the bundle's ``staging.verify_checksums: false``: no blake2b of inputs
    or outputs (which ``pipetask run-qbb`` does not compute either); the provenance record
    then keeps sizes only.
``pilot-transient`` (with ``--transient``)
    The same, with the middle intermediate dataset type listed in the bundle's
    ``execution.transient_dataset_types`` (only if the bundle schema has that property).
``j1`` / ``jN``
    ``pipetask pre-exec-init-qbb`` (untimed) then ``pipetask run-qbb -j 1`` / ``-j N``.
``sampled``
    One fresh ``pipetask run-qbb`` process per quantum, for ``--sample`` quanta (whole
    chains, in dependency order), extrapolated to the whole graph.

For every timed process the harness records the whole-process wall clock, the peak total
RSS of its process tree (psutil, polled every 50 ms) and per process, CPU time, and the
bytes read and written by the tree (``/proc/<pid>/io``).  It prints two tables and machine
facts, and writes everything to a JSON file.  See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

EXECUTORS = ("pilot", "pilot-nohash", "pilot-transient", "j1", "jN", "sampled")
IO_FIELDS = ("rchar", "wchar", "read_bytes", "write_bytes", "cancelled_write_bytes")
POLL_SECONDS = 0.05
OUTLIVE_TIMEOUT = 30.0
PR_SET_CHILD_SUBREAPER = 36
RAW_RUN = "raw/run"
OUTPUT_RUN = "bench/run"
INSTRUMENT = "DemoCam"  # pilot.demo.campaign.create_dbb's instrument
PACKAGES = (
    "quanta-pilot",
    "lsst-daf-butler",
    "lsst-pipe-base",
    "lsst-ctrl-mpexec",
    "lsst-resources",
    "lsst-utils",
    "numpy",
    "psutil",
)
REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


# --------------------------------------------------------------------------------------
# Measuring one process tree
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ProcessStats:
    """One process seen in a measured tree."""

    pid: int
    ppid: int
    command: str
    peak_rss_bytes: int = 0
    """Largest of the sampled RSS and the kernel's ``VmHWM`` (RSS high-water mark)."""
    peak_pss_bytes: int = 0
    """Largest sampled PSS (shared pages divided among the processes sharing them)."""
    io: dict[str, int] = dataclasses.field(default_factory=dict)
    """Last ``/proc/<pid>/io`` read while the process was alive (cumulative counters)."""


@dataclasses.dataclass
class Measurement:
    """Everything measured about one timed subprocess and its descendants."""

    command: list[str]
    log: str
    exit_code: int
    wall_seconds: float
    """From just before the process was started until the kernel reported its exit."""
    cpu_user_seconds: float
    cpu_system_seconds: float
    """CPU time of the whole tree (``wait4`` of the top process and of any outliving descendant)."""
    peak_tree_rss_bytes: int
    """Largest sum of the RSS of every live process of the tree at one 50 ms sample."""
    peak_tree_pss_bytes: int
    """Largest sum of the PSS of every live process of the tree at one 50 ms sample."""
    peak_tree_processes: int
    """Processes alive at the sample with the largest RSS sum."""
    io: dict[str, int]
    """Bytes read and written by the whole tree (see ``io_source``)."""
    io_source: str
    outliving_descendants: int
    """Descendants still running when the top process exited (waited for, not timed)."""
    processes: list[ProcessStats]
    samples: int

    @property
    def top_peak_rss_bytes(self) -> int:
        """Peak RSS of the top-level process."""
        return self.processes[0].peak_rss_bytes if self.processes else 0

    @property
    def child_peak_rss_bytes(self) -> list[int]:
        """Peak RSS of each descendant process."""
        return [p.peak_rss_bytes for p in self.processes[1:]]


def read_proc_io(pid: int) -> dict[str, int] | None:
    """Return ``/proc/<pid>/io`` as a dict, or None if it cannot be read (process gone)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in IO_FIELDS:
            values[key] = int(value)
    return values


def _read_kb(path: str, field: str) -> int:
    """Bytes of a ``Field:   N kB`` line of a ``/proc`` file, 0 if unavailable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _describe(proc: psutil.Process) -> str:
    """A short description of a process: its command line without the interpreter path."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return "?"
    if argv and Path(argv[0]).name.startswith("python") and len(argv) > 1:
        argv = argv[1:]
    if argv:
        argv = [Path(argv[0]).name, *argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


class TreeMonitor:
    """Poll a process and its descendants: RSS and PSS (sum and per process), ``/proc/<pid>/io``."""

    def __init__(self, pid: int, interval: float = POLL_SECONDS) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{pid}", daemon=True)
        self.stats: dict[tuple[int, float], ProcessStats] = {}
        self.peak_tree_rss = 0
        self.peak_tree_pss = 0
        self.peak_tree_processes = 0
        self.samples = 0

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval):
                return

    def sample(self) -> None:
        """Take one sample of the whole tree."""
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        total_rss = total_pss = alive = 0
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            stats = self.stats.get(key)
            if stats is None:
                try:
                    ppid = proc.ppid()
                except psutil.Error:
                    ppid = 0
                stats = self.stats[key] = ProcessStats(proc.pid, ppid, _describe(proc))
            elif proc.pid != self._root.pid and self.samples % 10 == 0:
                # A child first seen between fork and exec shows its parent's command line.
                stats.command = _describe(proc) if proc.is_running() else stats.command
            pss = _read_kb(f"/proc/{proc.pid}/smaps_rollup", "Pss")
            hwm = _read_kb(f"/proc/{proc.pid}/status", "VmHWM")
            stats.peak_rss_bytes = max(stats.peak_rss_bytes, rss, hwm)
            stats.peak_pss_bytes = max(stats.peak_pss_bytes, pss)
            io = read_proc_io(proc.pid)
            if io is not None:
                stats.io = io
            total_rss += rss
            total_pss += pss
            alive += rss > 0
        self.samples += 1
        self.peak_tree_pss = max(self.peak_tree_pss, total_pss)
        if total_rss > self.peak_tree_rss:
            self.peak_tree_rss = total_rss
            self.peak_tree_processes = alive


_SUBREAPER = False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``).

    A descendant that outlives its parent (a multiprocessing resource tracker or
    forkserver finishing after the top process) is then re-parented to the harness,
    which can read its final ``/proc/<pid>/io`` before reaping it.
    """
    global _SUBREAPER
    if not _SUBREAPER:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _SUBREAPER = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _SUBREAPER = False
    return _SUBREAPER


def _reap_exited_children() -> tuple[dict[str, int], float, float, int]:
    """Reap every exited child of the harness; return their summed final I/O, CPU and count."""
    io = dict.fromkeys(IO_FIELDS, 0)
    user = system = 0.0
    count = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is None:
            return io, user, system, count
        for k, v in (read_proc_io(info.si_pid) or {}).items():
            io[k] += v
        _, _, usage = os.wait4(info.si_pid, 0)
        user += usage.ru_utime
        system += usage.ru_stime
        count += 1


def run_measured(command: Sequence[str | Path], log_path: Path, cwd: Path | None = None) -> Measurement:
    """Run ``command`` to completion with stdout+stderr in ``log_path``; time and measure it.

    The wall clock runs from just before the process is started until the kernel reports
    it has exited.  The exited process is then left unreaped for a moment (``waitid`` with
    ``WNOWAIT``) so that its final ``/proc/<pid>/io`` can be read: the kernel folds the
    counters of every descendant a process reaped into the reaper's, so that one read is
    the I/O of the whole tree.  Descendants still running at that point (re-parented to the
    harness, see :func:`become_subreaper`) are waited for (untimed, up to
    ``OUTLIVE_TIMEOUT`` seconds) and their final counters added.
    """
    argv = [str(a) for a in command]
    subreaper = become_subreaper()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:
            proc.kill()
            proc.wait()
            monitor.stop()
            raise
        wall = time.perf_counter() - start
        monitor.stop()
        final_io = read_proc_io(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    processes = sorted(monitor.stats.values(), key=lambda s: (s.pid != proc.pid, s.pid))
    processes[0:1] = [dataclasses.replace(processes[0], command=" ".join(argv))] if processes else []
    user, system = usage.ru_utime, usage.ru_stime
    outliving = 0
    if final_io is not None:
        io = dict(final_io)
        source = "final /proc/<pid>/io of the exited top process (includes every reaped descendant)"
    else:  # pragma: no cover - only if /proc/<pid>/io is unreadable
        io = {k: sum(s.io.get(k, 0) for s in processes) for k in IO_FIELDS}
        source = "sum of the last 50 ms samples per process (approximate: final read failed)"
    if subreaper:
        deadline = time.monotonic() + OUTLIVE_TIMEOUT
        while True:
            more_io, more_user, more_system, count = _reap_exited_children()
            for k, v in more_io.items():
                io[k] = io.get(k, 0) + v
            user, system, outliving = user + more_user, system + more_system, outliving + count
            running = psutil.Process().children()
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if outliving:
            source += f" + final reads of {outliving} descendants that outlived it"
        if running:
            source += f"; {len(running)} descendants still running after {OUTLIVE_TIMEOUT:.0f} s not counted"
    return Measurement(
        command=argv,
        log=str(log_path),
        exit_code=proc.returncode,
        wall_seconds=wall,
        cpu_user_seconds=user,
        cpu_system_seconds=system,
        peak_tree_rss_bytes=monitor.peak_tree_rss,
        peak_tree_pss_bytes=monitor.peak_tree_pss,
        peak_tree_processes=monitor.peak_tree_processes,
        io=io,
        io_source=source,
        outliving_descendants=outliving,
        processes=processes,
        samples=monitor.samples,
    )


def log_tail(path: str | Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# Building the DBB and the quantum graph
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class GraphSetup:
    """The template DBB and quantum graph every executor runs."""

    template_dbb: Path
    qgraph: Path
    dataset_types: list[str]
    """``raw``, ``d1`` ... ``dT``: task ``i`` reads ``dataset_types[i]``, writes ``[i + 1]``."""
    n_quanta: int
    chain_order: list[uuid.UUID]
    """Every quantum, chain after chain, each chain in dependency order."""
    build_seconds: float
    qgraph_bytes: int


def build_graph(workdir: Path, n_data_ids: int, n_tasks: int, sleep: float, payload: int) -> GraphSetup:
    """Create the template DBB with raws, build the chained PayloadTask graph, write it."""
    import networkx
    import numpy as np
    from lsst.daf.butler import Butler, DatasetType
    from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder
    from lsst.pipe.base.pipeline_graph import PipelineGraph

    from pilot.demo.campaign import create_dbb
    from pilot.demo.probe_tasks import PayloadConfig, PayloadTask

    start = time.perf_counter()
    dbb = workdir / "dbb-template"
    qgraph = workdir / "graph.qg"
    names = ["raw", *(f"d{i}" for i in range(1, n_tasks + 1))]
    create_dbb(dbb, n_data_ids)
    with Butler.from_config(str(dbb), writeable=True, run=RAW_RUN) as butler:
        raw = DatasetType("raw", ["instrument", "detector"], "NumpyArray", universe=butler.dimensions)
        butler.registry.registerDatasetType(raw)
        for detector in range(n_data_ids):
            array = np.full(max(1, payload // 8), float(detector), dtype=np.float64)
            butler.put(array, "raw", instrument=INSTRUMENT, detector=detector)
        pipeline = PipelineGraph()
        for i in range(n_tasks):
            config = PayloadConfig()
            config.connections.inputName = names[i]
            config.connections.outputName = names[i + 1]
            config.sleep = sleep
            config.payload_bytes = payload
            pipeline.add_task(f"t{i}", PayloadTask, config)
        builder = AllDimensionsQuantumGraphBuilder(
            pipeline, butler, input_collections=[RAW_RUN], output_run=OUTPUT_RUN
        )
        components = builder.finish(attach_datastore_records=True)
        components.write(str(qgraph))
    xgraph = components.assemble().quantum_only_xgraph
    position = {q: i for i, q in enumerate(networkx.lexicographical_topological_sort(xgraph, key=str))}
    chains = sorted(networkx.weakly_connected_components(xgraph), key=lambda c: min(position[q] for q in c))
    order = [q for chain in chains for q in sorted(chain, key=position.__getitem__)]
    return GraphSetup(
        template_dbb=dbb,
        qgraph=qgraph,
        dataset_types=names,
        n_quanta=len(order),
        chain_order=order,
        build_seconds=time.perf_counter() - start,
        qgraph_bytes=qgraph.stat().st_size,
    )


# --------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExecutorResult:
    """One executor's run over the graph, with the figures the tables show."""

    key: str
    label: str
    workers: int
    quanta: int
    succeeded: int | None = None
    wall_seconds: float | None = None
    """Whole-process wall clock of the timed step (extrapolated for ``sampled``)."""
    bundle_seconds: float | None = None
    """The pilot's own time for the bundle (``timings.bundle_seconds`` or ``wall_seconds``)."""
    bundle_seconds_source: str | None = None
    cpu_seconds: float | None = None
    peak_tree_rss_bytes: int | None = None
    peak_tree_pss_bytes: int | None = None
    io: dict[str, int] | None = None
    io_extrapolated: bool = False
    ratio_vs_pilot: float | None = None
    overhead_ms_per_quantum_wall: float | None = None
    overhead_ms_per_quantum_bundle: float | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    timed: list[Measurement] = dataclasses.field(default_factory=list)
    untimed: dict[str, Measurement] = dataclasses.field(default_factory=dict)
    pilot_report: dict[str, Any] | None = None
    """Selected sections of the pilot's ``report.json`` (counts, timings, io, wall_seconds)."""
    sampled: dict[str, Any] | None = None

    def fill_from(self, m: Measurement) -> None:
        """Take wall, CPU, RSS and I/O from a single timed measurement."""
        self.timed.append(m)
        self.wall_seconds = m.wall_seconds
        self.cpu_seconds = m.cpu_user_seconds + m.cpu_system_seconds
        self.peak_tree_rss_bytes = m.peak_tree_rss_bytes
        self.peak_tree_pss_bytes = m.peak_tree_pss_bytes
        self.io = m.io


def bin_path(name: str) -> str:
    """The console script ``name`` next to this interpreter (the venv), else on ``PATH``."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench_executors: cannot find the {name!r} command")
    return found


def pilot_run_has_processes() -> bool:
    """True if ``pilot run --help`` lists a ``--processes`` option."""
    out = subprocess.run([bin_path("pilot"), "run", "--help"], capture_output=True, text=True, check=False)
    return re.search(r"--processes\b", out.stdout) is not None


def transient_supported() -> bool:
    """True if the bundle JSON Schema's execution section has ``transient_dataset_types``."""
    import pilot

    schema_path = Path(pilot.__file__).parent / "schemas" / "bundle.schema.json"
    try:
        schema = json.loads(schema_path.read_text())
    except (OSError, ValueError):
        return False
    execution: dict[str, Any] = schema.get("properties", {}).get("execution", {})
    ref = execution.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = schema
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        execution = node
    return "transient_dataset_types" in execution.get("properties", {})


def run_pilot(
    key: str,
    setup: GraphSetup,
    dbb: Path,
    workdir: Path,
    *,
    processes: int,
    pass_processes: bool,
    transient: str | None,
    no_hashing: bool = False,
) -> ExecutorResult:
    """``pilot bundle`` (untimed for the comparison) then ``pilot run`` (timed)."""
    workers = processes if pass_processes else 1
    label = f"pilot run{f' --processes {processes}' if pass_processes else ''}"
    if transient:
        label += f" (transient {transient})"
    if no_hashing:
        label += " (staging.verify_checksums: false)"
    result = ExecutorResult(key=key, label=label, workers=workers, quanta=setup.n_quanta)
    if not pass_processes:
        result.notes.append("pilot run has no --processes option: ran sequentially (1 worker)")
    logs = workdir / "logs"
    bundles = workdir / f"bundles-{key}"
    bundle_step = run_measured(
        [bin_path("pilot"), "bundle", setup.qgraph, "--repo", dbb, "--out", bundles],
        logs / f"{key}-bundle.log",
    )
    result.untimed["bundle"] = bundle_step
    if bundle_step.exit_code != 0:
        result.error = f"pilot bundle exited {bundle_step.exit_code}:\n{log_tail(bundle_step.log)}"
        return result
    files = sorted(bundles.glob("*.json"))
    if len(files) != 1:
        result.error = f"pilot bundle wrote {len(files)} bundles, expected 1"
        return result
    bundle_file = files[0]
    if transient:
        document = json.loads(bundle_file.read_text())
        document.setdefault("execution", {})["transient_dataset_types"] = [transient]
        bundle_file.write_text(json.dumps(document, indent=2) + "\n")
        result.notes.append(f"bundle execution.transient_dataset_types = [{transient!r}]")
    if no_hashing:  # no blake2b of inputs or outputs: what pipetask run-qbb does not do either
        document = json.loads(bundle_file.read_text())
        document.setdefault("staging", {})["verify_checksums"] = False
        bundle_file.write_text(json.dumps(document, indent=2) + "\n")
        result.notes.append("bundle staging.verify_checksums = false")
    workspace = workdir / f"ws-{key}"
    command: list[str | Path] = [bin_path("pilot"), "run", bundle_file, "--workspace", workspace]
    if pass_processes:
        command += ["--processes", str(processes)]
    run = run_measured(command, logs / f"{key}-run.log")
    result.fill_from(run)
    report_path = workspace / bundle_file.stem / "report.json"
    if not report_path.exists():
        result.error = f"pilot run exited {run.exit_code} without report.json:\n{log_tail(run.log)}"
        return result
    report = json.loads(report_path.read_text())
    result.pilot_report = {
        k: report[k]
        for k in ("status", "exit_code", "message", "counts", "wall_seconds", "timings", "io", "stage_in")
        if k in report
    }
    result.succeeded = int(report.get("counts", {}).get("succeeded", 0))
    timings = report.get("timings") or {}
    if isinstance(timings, dict) and timings.get("bundle_seconds") is not None:
        result.bundle_seconds = float(timings["bundle_seconds"])
        result.bundle_seconds_source = "report.json timings.bundle_seconds"
    else:
        result.bundle_seconds = float(report["wall_seconds"])
        result.bundle_seconds_source = "report.json wall_seconds (no timings.bundle_seconds)"
    if run.exit_code != 0:
        result.error = f"pilot run exited {run.exit_code}: {report.get('message') or log_tail(run.log, 5)}"
    return result


def pipetask_summary_successes(path: Path) -> int | None:
    """Quanta reported ``success`` in a ``pipetask --summary`` file, None if unreadable."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return sum(1 for q in summary.get("quantaReports", []) if q.get("status") == "success")


def pre_exec_init(key: str, setup: GraphSetup, dbb: Path, workdir: Path, qgraph: Path) -> Measurement:
    """``pipetask pre-exec-init-qbb DBB QGRAPH`` (measured, not part of the comparison)."""
    return run_measured(
        [bin_path("pipetask"), "pre-exec-init-qbb", dbb, qgraph], workdir / "logs" / f"{key}-init.log"
    )


def run_pipetask(key: str, setup: GraphSetup, dbb: Path, workdir: Path, jobs: int) -> ExecutorResult:
    """``pipetask pre-exec-init-qbb`` (untimed) then ``pipetask run-qbb -j JOBS`` (timed)."""
    result = ExecutorResult(key=key, label=f"pipetask run-qbb -j {jobs}", workers=jobs, quanta=setup.n_quanta)
    init = pre_exec_init(key, setup, dbb, workdir, setup.qgraph)
    result.untimed["pre-exec-init-qbb"] = init
    if init.exit_code != 0:
        result.error = f"pre-exec-init-qbb exited {init.exit_code}:\n{log_tail(init.log)}"
        return result
    summary = workdir / "summaries" / f"{key}.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    run = run_measured(
        [bin_path("pipetask"), "run-qbb", dbb, setup.qgraph, "-j", str(jobs), "--summary", summary],
        workdir / "logs" / f"{key}-run.log",
    )
    result.fill_from(run)
    result.succeeded = pipetask_summary_successes(summary)
    if run.exit_code != 0:
        result.error = f"pipetask run-qbb exited {run.exit_code}:\n{log_tail(run.log)}"
    return result


def run_sampled(setup: GraphSetup, dbb: Path, workdir: Path, sample: int, mode: str) -> ExecutorResult:
    """One ``pipetask run-qbb`` process per quantum for ``sample`` quanta; extrapolate.

    The sampled quanta are the first ``sample`` of :attr:`GraphSetup.chain_order` (whole
    chains in dependency order), so every input exists when its quantum runs.  ``mode``
    ``auto`` tries ``--qgraph-node-id`` on the full graph and falls back to single-quantum
    graphs (``pilot.central.graph_split.BundleGraphWriter``) if that dies with ``EOFError``
    (CPython gh-127847); ``node-id`` and ``single-graph`` force one path.
    """
    key = "sampled"
    quanta = setup.chain_order[: max(1, min(sample, setup.n_quanta))]
    result = ExecutorResult(
        key=key,
        label=f"pipetask run-qbb per quantum (sampled {len(quanta)})",
        workers=1,
        quanta=setup.n_quanta,
    )
    init = pre_exec_init(key, setup, dbb, workdir, setup.qgraph)
    result.untimed["pre-exec-init-qbb"] = init
    if init.exit_code != 0:
        result.error = f"pre-exec-init-qbb exited {init.exit_code}:\n{log_tail(init.log)}"
        return result
    graphs_dir = workdir / "sampled-graphs"
    summaries = workdir / "summaries"
    summaries.mkdir(parents=True, exist_ok=True)
    path = (
        "single-quantum graphs (forced)" if mode == "single-graph" else "--qgraph-node-id on the full graph"
    )
    single: dict[uuid.UUID, Path] = {}
    if mode == "single-graph":
        single = write_single_quantum_graphs(setup.qgraph, quanta, graphs_dir)
    runs: list[Measurement] = []
    succeeded = 0
    fallback_seconds: float | None = None
    index = 0
    while index < len(quanta):
        qid = quanta[index]
        summary = summaries / f"sampled-{index:03d}.json"
        command: list[str | Path]
        if qid in single:
            command = [bin_path("pipetask"), "run-qbb", dbb, single[qid], "--summary", summary]
        else:
            command = [
                bin_path("pipetask"), "run-qbb", dbb, setup.qgraph,
                "--qgraph-node-id", str(qid), "--summary", summary,
            ]  # fmt: skip
        log = workdir / "logs" / f"sampled-{index:03d}{'-single' if qid in single else ''}.log"
        m = run_measured(command, log)
        if (
            m.exit_code != 0
            and not single
            and mode == "auto"
            and "EOFError" in Path(m.log).read_text(errors="replace")
        ):
            # gh-127847: the partial read of the .qg died; switch every sampled quantum to
            # its own single-quantum graph and run this one again.
            result.untimed[f"failed-node-id-{index:03d}"] = m
            start = time.perf_counter()
            single = write_single_quantum_graphs(setup.qgraph, quanta, graphs_dir)
            fallback_seconds = time.perf_counter() - start
            path = (
                f"single-quantum graphs (fallback: --qgraph-node-id died with EOFError, gh-127847, "
                f"after {m.wall_seconds:.2f} s, not counted)"
            )
            continue
        runs.append(m)
        succeeded += pipetask_summary_successes(summary) or 0
        if m.exit_code != 0 and result.error is None:
            result.error = f"run-qbb for quantum {qid} exited {m.exit_code}:\n{log_tail(m.log)}"
        index += 1
    result.timed = runs
    walls = [m.wall_seconds for m in runs]
    mean = statistics.fmean(walls)
    result.wall_seconds = mean * setup.n_quanta
    result.cpu_seconds = (
        statistics.fmean(m.cpu_user_seconds + m.cpu_system_seconds for m in runs) * setup.n_quanta
    )
    result.peak_tree_rss_bytes = max(m.peak_tree_rss_bytes for m in runs)
    result.peak_tree_pss_bytes = max(m.peak_tree_pss_bytes for m in runs)
    result.io = {k: round(statistics.fmean(m.io.get(k, 0) for m in runs) * setup.n_quanta) for k in IO_FIELDS}
    result.io_extrapolated = True
    result.succeeded = round(succeeded / len(runs) * setup.n_quanta) if runs else 0
    result.notes.append(f"path: {path}")
    result.notes.append(
        f"wall, CPU and I/O extrapolated: mean of {len(runs)} processes x {setup.n_quanta} quanta"
    )
    result.sampled = {
        "path": path,
        "quantum_ids": [str(q) for q in quanta],
        "wall_seconds_each": walls,
        "wall_seconds_mean": mean,
        "wall_seconds_median": statistics.median(walls),
        "wall_seconds_min": min(walls),
        "wall_seconds_max": max(walls),
        "wall_seconds_stdev": statistics.stdev(walls) if len(walls) > 1 else 0.0,
        "succeeded_in_sample": succeeded,
        "single_graph_write_seconds": fallback_seconds,
    }
    return result


def write_single_quantum_graphs(
    qgraph: Path, quanta: Sequence[uuid.UUID], directory: Path
) -> dict[uuid.UUID, Path]:
    """Write one standalone ``.qg`` per quantum (same pipeline and init quanta, its own dimension records)."""
    from lsst.resources import ResourcePath

    from pilot.central.graph_split import BundleGraphWriter, read_splittable_graph

    directory.mkdir(parents=True, exist_ok=True)
    writer = BundleGraphWriter(read_splittable_graph(ResourcePath(str(qgraph))))
    paths: dict[uuid.UUID, Path] = {}
    for qid in quanta:
        path = directory / f"{qid}.qg"
        writer.write([qid], path)
        paths[qid] = path
    return paths


# --------------------------------------------------------------------------------------
# Derived figures, tables, machine facts
# --------------------------------------------------------------------------------------


def derive(results: list[ExecutorResult], sleep: float) -> None:
    """Fill in ratio vs pilot and per-quantum overhead: ``(time x workers - quanta x S) / quanta``."""
    pilot = next((r for r in results if r.key == "pilot" and r.wall_seconds), None)
    for r in results:
        if r.wall_seconds is None or r.quanta == 0:
            continue
        if pilot is not None and pilot.wall_seconds:
            r.ratio_vs_pilot = r.wall_seconds / pilot.wall_seconds
        busy = r.quanta * sleep
        r.overhead_ms_per_quantum_wall = (r.wall_seconds * r.workers - busy) / r.quanta * 1000
        if r.bundle_seconds is not None:
            r.overhead_ms_per_quantum_bundle = (r.bundle_seconds * r.workers - busy) / r.quanta * 1000


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def per_process_rss(r: ExecutorResult) -> str:
    """Peak RSS per process, in MB: ``top`` or ``top + n x <=max child`` (``each`` when sampled)."""
    if not r.timed:
        return "-"
    if r.key == "sampled":
        return f"{max(m.top_peak_rss_bytes for m in r.timed) / MB:.0f} each"
    m = r.timed[0]
    children = m.child_peak_rss_bytes
    text = f"{m.top_peak_rss_bytes / MB:.0f}"
    if children:
        text += f" + {len(children)}x<={max(children) / MB:.0f}"
    return text


def format_tables(results: list[ExecutorResult], sleep: float) -> str:
    """The timing table and the resources table."""
    timing_rows = []
    for r in results:
        ok = "-" if r.succeeded is None else f"{r.succeeded}/{r.quanta}"
        wall = _fmt(r.wall_seconds, ".2f") + ("~" if r.key == "sampled" and r.wall_seconds else "")
        timing_rows.append(
            (
                r.key,
                str(r.workers),
                ok,
                wall,
                _fmt(r.bundle_seconds, ".2f"),
                _fmt(r.ratio_vs_pilot, ".2f"),
                _fmt(r.overhead_ms_per_quantum_wall, ".1f"),
                _fmt(r.overhead_ms_per_quantum_bundle, ".1f"),
                _fmt(r.cpu_seconds, ".1f"),
                "ok" if r.error is None else "ERROR",
            )
        )
    timing = _table(
        (
            "executor",
            "workers",
            "quanta ok",
            "wall s",
            "bundle s",
            "x pilot",
            "ovh ms/q (wall)",
            "ovh ms/q (bundle)",
            "CPU s",
            "status",
        ),
        timing_rows,
    )
    resource_rows = []
    for r in results:
        io = r.io or {}
        mark = "~" if r.io_extrapolated else ""
        procs = "-"
        if r.timed:
            procs = str(r.quanta) if r.key == "sampled" else str(len(r.timed[0].processes))

        def mb(field: str, io: dict[str, int] = io, mark: str = mark) -> str:
            return f"{io[field] / MB:.1f}{mark}" if field in io else "-"

        resource_rows.append(
            (
                r.key,
                procs,
                _fmt(None if r.peak_tree_rss_bytes is None else r.peak_tree_rss_bytes / MB, ".0f"),
                _fmt(None if r.peak_tree_pss_bytes is None else r.peak_tree_pss_bytes / MB, ".0f"),
                per_process_rss(r),
                mb("rchar"),
                mb("read_bytes"),
                mb("wchar"),
                mb("write_bytes"),
            )
        )
    resources = _table(
        (
            "executor",
            "procs",
            "peak RSS tree MB",
            "peak PSS tree MB",
            "peak RSS/process MB",
            "read MB (rchar)",
            "read MB (disk)",
            "written MB (wchar)",
            "written MB (disk)",
        ),
        resource_rows,
    )
    return f"{timing}\n\n{resources}"


def machine_facts(workdir: Path) -> dict[str, Any]:
    """CPU, memory, OS, Python, package versions and the project's git commit."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    git = {}
    for key, args in (("commit", ["rev-parse", "HEAD"]), ("status", ["status", "--porcelain"])):
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
        )
        git[key] = out.stdout.strip() if out.returncode == 0 else None
    disk = shutil.disk_usage(workdir)
    return {
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": packages,
        "git_commit": git["commit"],
        "git_dirty": bool(git["status"]) if git["status"] is not None else None,
        "workdir_free_bytes": disk.free,
        "loadavg_at_start": list(os.getloadavg()),
    }


def format_machine(facts: dict[str, Any]) -> str:
    """Machine facts as a few lines of text."""
    pkgs = ", ".join(f"{k} {v}" for k, v in facts["packages"].items())
    dirty = " (dirty tree)" if facts["git_dirty"] else ""
    return (
        f"machine: {facts['nproc']} CPUs ({facts['cpu_affinity']} usable), {facts['cpu_model']}, "
        f"{facts['ram_bytes'] / 2**30:.1f} GiB RAM, {facts['platform']}\n"
        f"python {facts['python']} ({facts['python_executable']})\n"
        f"packages: {pkgs}\n"
        f"quanta-pilot commit {facts['git_commit']}{dirty}"
    )


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-ids", type=int, default=50, help="Detectors (quanta per task).")
    parser.add_argument("--tasks", type=int, default=3, help="Chained PayloadTasks.")
    parser.add_argument("--sleep", type=float, default=0.05, help="Seconds each quantum sleeps (S).")
    parser.add_argument("--payload", type=int, default=8, help="Bytes of every raw and every output (P).")
    parser.add_argument("--processes", type=int, default=2, help="N: pilot --processes and pipetask -j N.")
    parser.add_argument("--sample", type=int, default=6, help="Quanta run one-process-each (K).")
    parser.add_argument(
        "--sampled-mode",
        choices=("auto", "node-id", "single-graph"),
        default="auto",
        help="sampled: --qgraph-node-id with fallback (auto), or force one path.",
    )
    parser.add_argument(
        "--transient",
        action="store_true",
        help="Also run the pilot with the middle dataset type transient (if the bundle schema allows).",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="Empty or new directory (default: temp).")
    parser.add_argument(
        "--skip", default="", help=f"Comma-separated executors to skip, of: {', '.join(EXECUTORS)}."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="Results JSON (default: <workdir>/results.json)."
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the DBB copies and workspaces (default: delete them)."
    )
    args = parser.parse_args(argv)
    for name in ("data_ids", "tasks", "processes", "sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sleep < 0 or args.payload < 1:
        parser.error("--sleep must be >= 0 and --payload >= 1")
    by_lower = {e.lower(): e for e in EXECUTORS}
    skip = set()
    for item in filter(None, (s.strip() for s in args.skip.split(","))):
        if item.lower() not in by_lower:
            parser.error(f"--skip: unknown executor {item!r} (choose from {', '.join(EXECUTORS)})")
        skip.add(by_lower[item.lower()])
    args.skip = skip
    return args


def choose_workdir(explicit: Path | None) -> Path:
    """``explicit`` (must be new or empty) or a new temporary directory."""
    if explicit is None:
        return Path(tempfile.mkdtemp(prefix="bench-executors-")).absolute()
    explicit = explicit.absolute()
    if explicit.exists() and any(explicit.iterdir()):
        raise SystemExit(f"bench_executors: --workdir {explicit} is not empty")
    explicit.mkdir(parents=True, exist_ok=True)
    return explicit


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and UUIDs to plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path | uuid.UUID):
        return str(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 if every executor ran every quantum, else 1."""
    args = parse_args(argv)
    workdir = choose_workdir(args.workdir)
    out = (args.out or workdir / "results.json").absolute()
    started = datetime.now(UTC)
    print(f"workdir: {workdir}", flush=True)
    facts = machine_facts(workdir)
    print(format_machine(facts), flush=True)
    if facts["loadavg_at_start"][0] > 0.5:
        print(
            f"warning: the machine is busy (1-min load {facts['loadavg_at_start'][0]:.2f}): "
            "timings will be noisy",
            flush=True,
        )

    wanted = [e for e in EXECUTORS if e not in args.skip and (e != "pilot-transient" or args.transient)]
    transient_name: str | None = None
    skipped_notes: list[str] = []
    if "pilot-transient" in wanted:
        intermediates = [f"d{i}" for i in range(1, args.tasks)]
        if not intermediates:
            skipped_notes.append("transient: --tasks 1 has no intermediate dataset type; skipped")
        elif not transient_supported():
            skipped_notes.append(
                "transient unsupported: pilot/schemas/bundle.schema.json has no "
                "execution.transient_dataset_types; pilot-transient skipped"
            )
        else:
            transient_name = intermediates[(len(intermediates) - 1) // 2]
        if transient_name is None:
            wanted.remove("pilot-transient")
    for note in skipped_notes:
        print(note, flush=True)
    pilots = {"pilot", "pilot-nohash", "pilot-transient"}
    pass_processes = pilot_run_has_processes() if pilots & set(wanted) else False

    print(
        f"building: {args.data_ids} data IDs x {args.tasks} tasks, sleep {args.sleep} s, "
        f"payload {args.payload} B ...",
        flush=True,
    )
    setup = build_graph(workdir, args.data_ids, args.tasks, args.sleep, args.payload)
    print(
        f"graph: {setup.n_quanta} quanta, {setup.qgraph_bytes / 1e3:.0f} kB, built in "
        f"{setup.build_seconds:.1f} s",
        flush=True,
    )
    dbbs = {key: workdir / f"dbb-{key}" for key in wanted}
    for path in dbbs.values():
        shutil.copytree(setup.template_dbb, path, symlinks=True)

    results: list[ExecutorResult] = []
    for key in wanted:
        print(f"running {key} ...", flush=True)
        if key in ("pilot", "pilot-nohash", "pilot-transient"):
            result = run_pilot(
                key,
                setup,
                dbbs[key],
                workdir,
                processes=args.processes,
                pass_processes=pass_processes,
                transient=transient_name if key == "pilot-transient" else None,
                no_hashing=key == "pilot-nohash",
            )
        elif key == "j1":
            result = run_pipetask(key, setup, dbbs[key], workdir, 1)
        elif key == "jN":
            result = run_pipetask(key, setup, dbbs[key], workdir, args.processes)
        else:
            result = run_sampled(setup, dbbs[key], workdir, args.sample, args.sampled_mode)
        results.append(result)
        status = "ok" if result.error is None else "ERROR"
        print(f"  {key}: {status}, wall {_fmt(result.wall_seconds, '.2f')} s", flush=True)

    derive(results, args.sleep)
    print()
    print(
        f"{setup.n_quanta} quanta ({args.data_ids} data IDs x {args.tasks} tasks), S = {args.sleep} s, "
        f"P = {args.payload} B, N = {args.processes}; Σ task sleep = {setup.n_quanta * args.sleep:.2f} s"
    )
    print(format_tables(results, args.sleep))
    print()
    print("ovh ms/q = (time x workers - quanta x S) / quanta; '~' = extrapolated from the sample.")
    for r in results:
        for note in r.notes:
            print(f"{r.key}: {note}")
        if r.bundle_seconds_source:
            print(f"{r.key}: bundle s from {r.bundle_seconds_source}")
        if "bundle" in r.untimed:
            print(f"{r.key}: pilot bundle step (not counted) {r.untimed['bundle'].wall_seconds:.2f} s")
        if r.pilot_report:
            for section in ("timings", "io"):
                if section in r.pilot_report:
                    print(f"{r.key}: report.json {section}: {json.dumps(r.pilot_report[section])}")
        if r.sampled:
            s = r.sampled
            print(
                f"{r.key}: per-process wall mean {s['wall_seconds_mean']:.2f} s, median "
                f"{s['wall_seconds_median']:.2f}, min {s['wall_seconds_min']:.2f}, "
                f"max {s['wall_seconds_max']:.2f}"
            )
        if r.error:
            print(f"{r.key}: ERROR: {r.error}")

    document = {
        "started_at": started.isoformat(),
        "ended_at": datetime.now(UTC).isoformat(),
        "loadavg_at_end": list(os.getloadavg()),
        "parameters": {
            "data_ids": args.data_ids,
            "tasks": args.tasks,
            "sleep": args.sleep,
            "payload": args.payload,
            "processes": args.processes,
            "sample": args.sample,
            "sampled_mode": args.sampled_mode,
            "transient": args.transient,
            "transient_dataset_type": transient_name,
            "skip": sorted(args.skip),
            "pilot_run_has_processes": pass_processes,
        },
        "notes": skipped_notes,
        "machine": facts,
        "graph": setup,
        "workdir": workdir,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(document), indent=2) + "\n")
    print(f"\nresults: {out}\nlogs: {workdir / 'logs'}")
    if not args.keep:
        for pattern in ("dbb-*", "bundles-*", "ws-*", "sampled-graphs"):
            for path in workdir.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)
    ok = all(r.error is None and r.succeeded == r.quanta for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
