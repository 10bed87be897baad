#!/usr/bin/env python
"""Whole-workflow wall time of a clustered ``bps submit``, three ways.

One invocation builds a DBB (demo instrument, ``--detectors`` detectors, the demo's mock
raws), writes the demo's 3-task pipeline (mock tasks sleeping ``--sleep`` s each) and runs
``bps submit`` three times, one after the other, each on its own copy of the DBB, clustered
``--detectors-per-job`` detectors' chains per BPS job (BPS's ``partitionDimensions``):

``pipetask``
    ctrl_bps_parsl on the loopback site (``--cores`` jobs at a time), stock ``pipetask
    run-qbb`` jobs, BPS's final job registering the outputs.
``pilot``
    the same, with ``runQuantumCommand`` set to ``pilot run-qbb``.
``service``
    ``wmsServiceClass: pilot.bps.PilotService``: a ``pilot serve`` (fresh scheduler
    directory, a free loopback port) is running; ``bps submit`` queues one bundle per job,
    then one ``pilot start --processes <cores>`` runs them and the scheduler ingests.

Timed from the start of ``bps submit`` (graph generation included) until the outputs are
registered: the Parsl ways when ``bps submit`` returns (final job included), the service way
when the scheduler reports the workflow no longer running (every bundle ingested); the
pilot is started when ``bps submit`` returns, its start-up inside the time.  It checks that
every quantum's output was registered and prints a table with the ratios to ``pipetask``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lsst.daf.butler import Butler

from pilot.bps.local_submit import MockTask, Submission, bps_submit, pipeline_yaml, submit_yaml
from pilot.demo.bps_demo import IN_COLLECTION, insert_raws
from pilot.demo.campaign import PIPELINE, create_dbb
from pilot.glidein.client import SchedulerClient

WAYS = ("pipetask", "pilot", "service")
RUN = "bench/run"
TOKEN = "bench-bps-token"


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every way shares: the DBB to copy, the pipeline, the job shape."""

    root: Path
    repo: Path
    pipeline: Path
    cores: int
    detectors_per_job: int


def _submission(setup: Setup, work: Path, repo: Path, way: str, scheduler: str = "") -> Submission:
    return Submission(
        pipeline=str(setup.pipeline),
        butler=str(repo),
        in_collection=IN_COLLECTION,
        output="bench",
        output_run=RUN,
        labels=[label for label, _, _ in PIPELINE],
        submit_path=str(work / "submit"),
        cores=setup.cores,
        job_command="pipetask" if way == "pipetask" else "pilot",
        detectors_per_job=setup.detectors_per_job,
        pilot_scheduler=scheduler,
        pilot_token_file=str(work / "token") if scheduler else "",
    )


def _prepare(setup: Setup, way: str) -> tuple[Path, Path]:
    """A work directory for ``way`` and its own copy of the DBB."""
    work = setup.root / way
    work.mkdir()
    copy = work / "dbb"
    shutil.copytree(setup.repo, copy)
    return work, copy


def _submit(work: Path, submission: Submission, way: str) -> str:
    """Write the submit YAML, run ``bps submit``; return its stdout, exit on failure."""
    config = work / "bps-submit.yaml"
    config.write_text(submit_yaml(submission))
    result = bps_submit(config, cwd=work)
    if result.returncode != 0:
        sys.exit(f"{way}: bps submit exited {result.returncode}:\n{result.stdout[-4000:]}")
    return result.stdout


def _outputs_registered(repo: Path) -> int:
    outputs = {output for _, _, output in PIPELINE}
    with Butler.from_config(str(repo)) as butler:
        refs = butler.query_all_datasets(RUN, limit=None)
        return sum(ref.datasetType.name in outputs for ref in refs)


def _time_parsl(setup: Setup, way: str) -> tuple[float, int]:
    """``bps submit`` with ctrl_bps_parsl, ``pipetask`` or ``pilot`` jobs: wall s, outputs."""
    work, copy = _prepare(setup, way)
    submission = _submission(setup, work, copy, way)
    start = time.perf_counter()
    _submit(work, submission, way)
    return time.perf_counter() - start, _outputs_registered(copy)


def _env() -> dict[str, str]:
    """This interpreter's tools first on PATH, this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH", "")] if p)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[str], name: str) -> None:
    """SIGTERM ``process`` (a drain for a pilot), SIGKILL it if it has not ended within 60 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop on SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait()


@contextlib.contextmanager
def _serve(work: Path, repo: Path) -> Iterator[str]:
    """A ``pilot serve`` over ``repo`` with a fresh scheduler directory; yield its URL once it listens."""
    (work / "token").write_text(TOKEN + "\n")
    port = _free_port()
    command = [sys.executable, "-m", "pilot.cli", "serve", str(work / "scheduler"), "--repo", str(repo)]
    command += ["--token-file", str(work / "token"), "--port", str(port)]
    with open(work / "serve.log", "w") as log:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=_env())
    try:
        assert server.stdout is not None
        if "queued" not in server.stdout.readline():  # printed once the socket is bound
            sys.exit(f"pilot serve did not start:\n{(work / 'serve.log').read_text()[-4000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(server, "pilot serve")


def _start_pilot(work: Path, url: str, cores: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "pilot.cli", "start", "--scheduler", url]
    command += ["--token-file", str(work / "token"), "--workspace", str(work / "pilot")]
    command += ["--processes", str(cores), "--idle-timeout", "5"]
    (work / "pilot").mkdir()
    with open(work / "pilot.log", "w") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=_env())


def _wait_done(client: SchedulerClient, run_id: str, pilot: subprocess.Popen[str], log: Path) -> str:
    """Poll the scheduler until workflow ``run_id`` is no longer running; return its state."""
    gone_at: float | None = None
    while (state := client.workflow(run_id).state) == "running":
        if pilot.poll() is not None:
            gone_at = gone_at or time.monotonic()
            if time.monotonic() - gone_at > 120:  # the last ingests had their time
                sys.exit(f"service: pilot exited {pilot.returncode}, work left:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)
    return state


def _time_service(setup: Setup) -> tuple[float, int]:
    """``bps submit`` to PilotService, one ``pilot start`` running the bundles: wall s, outputs."""
    work, copy = _prepare(setup, "service")
    with _serve(work, copy) as url:
        submission = _submission(setup, work, copy, "service", scheduler=url)
        start = time.perf_counter()
        stdout = _submit(work, submission, "service")
        pilot = _start_pilot(work, url, setup.cores)
        try:
            run_id = next(line.split(":", 1)[1].strip() for line in stdout.splitlines() if "Run Id:" in line)
            state = _wait_done(SchedulerClient(url, TOKEN), run_id, pilot, work / "pilot.log")
            wall = time.perf_counter() - start
        finally:
            _stop(pilot, "pilot start")
    if state != "succeeded":
        print(f"service: workflow {run_id} ended {state}", file=sys.stderr)
    return wall, _outputs_registered(copy)


def _table(results: dict[str, tuple[float, int]], quanta: int) -> list[str]:
    base = results["pipetask"][0]
    rows = ["| way | jobs run | wall s | outputs registered | x pipetask |", "|---|---|---|---|---|"]
    what = {
        "pipetask": "Parsl, `pipetask run-qbb`",
        "pilot": "Parsl, `pilot run-qbb`",
        "service": "PilotService, `pilot start`",
    }
    for way, (wall, n_outputs) in results.items():
        rows.append(f"| `{way}` | {what[way]} | {wall:.1f} | {n_outputs}/{quanta} | {base / wall:.2f} |")
    return rows


def _setup(args: argparse.Namespace, root: Path) -> Setup:
    """The DBB with the mock raws and the pipeline YAML, in ``root``."""
    repo = root / "dbb"
    create_dbb(repo, args.detectors)
    insert_raws(repo, args.sleep)
    pipeline = root / "pipeline.yaml"
    tasks = [MockTask(label, source, target, sleep=args.sleep) for label, source, target in PIPELINE]
    pipeline.write_text(pipeline_yaml(tasks, "bench_bps"))
    return Setup(root, repo, pipeline, args.cores, args.detectors_per_job)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", type=int, default=12, help="detectors (each a chain of 3 quanta)")
    parser.add_argument("--detectors-per-job", type=int, default=1, help="detectors' chains per BPS job")
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each mock quantum sleeps")
    parser.add_argument("--cores", type=int, default=2, help="Parsl jobs at a time; the pilot's workers")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="pipetask is the base")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a tmp dir)")
    args = parser.parse_args()
    root = (args.keep or Path(tempfile.mkdtemp(prefix="bench-bps-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    setup = _setup(args, root)
    ways = ["pipetask", *(way for way in args.ways if way != "pipetask")]
    results = {way: _time_service(setup) if way == "service" else _time_parsl(setup, way) for way in ways}
    quanta = args.detectors * len(PIPELINE)
    jobs = -(-args.detectors // args.detectors_per_job)
    print(
        f"{quanta} quanta ({args.detectors} detectors x {len(PIPELINE)} tasks, {jobs} jobs of"
        f" {args.detectors_per_job} detectors), sleep {args.sleep} s, {args.cores} cores,"
        f" 1-min load at start {load:.2f}"
    )
    print("\n".join(_table(results, quanta)))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
