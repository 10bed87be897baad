"""Shared fixtures: real butler repositories, real mock PipelineTasks, the real ``pilot`` CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from lsst.daf.butler import Butler, DatasetRef, DatasetType
from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder
from lsst.pipe.base.pipeline_graph import PipelineGraph
from lsst.pipe.base.tests.mocks import (
    DirectButlerRepo,
    DynamicConnectionConfig,
    DynamicTestPipelineTaskConfig,
)
from throwaway_postgres import have_postgres, postgres_server

from pilot.demo.campaign import create_dbb
from pilot.demo.probe_tasks import PayloadConfig, PayloadTask

DIMENSIONS = ("instrument", "detector")


@dataclasses.dataclass
class TaskSpec:
    """One mock PipelineTask of a test pipeline (one quantum per detector)."""

    label: str
    input: str
    output: str
    fail_condition: str = ""
    fail_signal: int | None = None
    sleep: float = 0.0
    shared_input: str | None = None
    """A second input with only the instrument dimension: one dataset every quantum reads."""


CHAIN3 = (
    TaskSpec("isr", "raw", "postISRCCD"),
    TaskSpec("calibrate", "postISRCCD", "calexp"),
    TaskSpec("measure", "calexp", "src"),
)

FAILING_CHAIN = (
    TaskSpec("isr", "raw", "postISRCCD"),
    TaskSpec("calibrate", "postISRCCD", "calexp", fail_condition="detector = 2"),
    TaskSpec("measure", "calexp", "src"),
)


def registered_datasets(repo: Path, run: str, with_ids: bool = True) -> dict[tuple[str, str], object]:
    """Datasets of ``run`` (type, data ID) and, for the mocks' outputs, their content.

    ``with_ids=False`` drops the dataset IDs from the content, to compare the runs of two
    separately built graphs.
    """
    from lsst.pipe.base.tests.mocks import MockStorageClass, get_original_name, is_mock_name

    def content(ref: DatasetRef) -> object:
        if ref.datasetType.name not in ("postISRCCD", "calexp", "src"):
            return None
        dumped = butler.get(ref).model_dump(mode="json")
        return dumped if with_ids else _without_ids(dumped)

    with Butler.from_config(str(repo)) as butler:
        refs = list(butler.query_all_datasets(run, find_first=False))
        for ref in refs:
            if is_mock_name(ref.datasetType.storageClass_name):
                MockStorageClass.get_or_register_mock(get_original_name(ref.datasetType.storageClass_name))
        return {(ref.datasetType.name, str(ref.dataId.required)): content(ref) for ref in refs}


def _without_ids(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "dataset_id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def build_graph(repo: Path, output_run: str, qgraph: Path, tasks: Sequence[TaskSpec]) -> Path:
    """Build and write a quantum graph (with datastore records) of ``tasks`` over ``repo``."""
    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, use_import_collections_as_input=False, data_root=None)
        for spec in tasks:
            config = DynamicTestPipelineTaskConfig()
            config.sleep = spec.sleep
            config.fail_condition = spec.fail_condition
            config.fail_signal = spec.fail_signal
            mock_repo.add_task(
                spec.label,
                dimensions=DIMENSIONS,
                config=config,
                inputs={
                    "input": DynamicConnectionConfig(
                        dataset_type_name=spec.input, dimensions=list(DIMENSIONS)
                    ),
                    **(
                        {
                            "shared": DynamicConnectionConfig(
                                dataset_type_name=spec.shared_input, dimensions=["instrument"]
                            )
                        }
                        if spec.shared_input
                        else {}
                    ),
                },
                outputs={
                    "output": DynamicConnectionConfig(
                        dataset_type_name=spec.output, dimensions=list(DIMENSIONS)
                    )
                },
            )
        builder = mock_repo.make_quantum_graph_builder(
            output_run=output_run, register_output_dataset_types=False
        )
        components = builder.finish(output=output_run.split("/")[0], attach_datastore_records=True)
        qgraph.parent.mkdir(parents=True, exist_ok=True)
        components.write(str(qgraph))
    return qgraph


@dataclasses.dataclass
class Campaign:
    """A DBB, a graph over it, and the directories the pilot uses."""

    root: Path
    repo: Path
    qgraph: Path
    output_run: str

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def staging(self) -> Path:
        return self.repo / "pilot-staging"

    def bundle_files(self) -> list[Path]:
        return sorted(self.bundles_dir.glob("*.json"))

    def datasets_in_run(self) -> list[tuple[str, str]]:
        """(dataset type, data ID) of every dataset registered in the output run."""
        with Butler.from_config(str(self.repo)) as butler:
            refs = butler.query_all_datasets(self.output_run, limit=None)
            return sorted((ref.datasetType.name, str(ref.dataId.required)) for ref in refs)


def make_campaign(
    root: Path, tasks: Sequence[TaskSpec] = CHAIN3, n_detectors: int = 6, run: str = "test/run1"
) -> Campaign:
    """Create a DBB with ``n_detectors`` detectors and a quantum graph of ``tasks``."""
    repo = root / "dbb"
    create_dbb(repo, n_detectors)
    qgraph = build_graph(repo, run, root / "graph.qg", tasks)
    return Campaign(root, repo, qgraph, run)


def payload_campaign(
    root: Path, n: int, output_run: str, configure: Callable[[int, PayloadConfig], None]
) -> Campaign:
    """A DBB of ``n`` NumpyArray raws and a t0 → t1 chain of the project's PayloadTask, in one bundle.

    ``configure(index, config)`` sets up task ``t<index>`` beyond its connections.
    """
    repo = root / "dbb"
    create_dbb(repo, n)
    with Butler.from_config(str(repo), writeable=True, run="raw/run") as butler:
        butler.registry.registerDatasetType(
            DatasetType("raw", ["instrument", "detector"], "NumpyArray", universe=butler.dimensions)
        )
        for detector in range(n):
            butler.put(np.zeros(16), "raw", instrument="DemoCam", detector=detector)
        pipeline = PipelineGraph()
        for index, (source, target) in enumerate([("raw", "mid"), ("mid", "final")]):
            config = PayloadConfig()
            config.connections.inputName = source
            config.connections.outputName = target
            configure(index, config)
            pipeline.add_task(f"t{index}", PayloadTask, config)
        builder = AllDimensionsQuantumGraphBuilder(
            pipeline, butler, input_collections=["raw/run"], output_run=output_run
        )
        builder.finish(attach_datastore_records=True).write(str(root / "graph.qg"))
    camp = Campaign(root, repo, root / "graph.qg", output_run)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir)
    assert result.returncode == 0, result.stderr
    return camp


def pilot(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real ``pilot`` command in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "pilot.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def read_report(area: Path, bundle_id: str | None = None) -> dict:
    """Load the report.json of ``bundle_id`` (default: the only bundle) in a ``pilot run`` work area."""
    if bundle_id is None:
        (path,) = area.glob("*/report.json")
    else:
        path = area / bundle_id / "report.json"
    return json.loads(path.read_text())


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    """A 6-detector, 3-task campaign, bundled two chains per bundle."""
    camp = make_campaign(tmp_path)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    return camp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_webdav(root: Path, port: int, faults: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the test WebDAV server serving ``root`` on ``port`` (see webdav_server.py for ``faults``)."""
    root.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "webdav_server.py"), str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(faults or {})},
    )
    _wait_for_port(port, server, "WebDAV server")
    return server


def stop_process(process: subprocess.Popen) -> None:
    """Terminate ``process`` and wait for it."""
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[str]:
    """Serve ``tmp_path/dav`` over WebDAV; yield its root URL."""
    port = _free_port()
    server = start_webdav(tmp_path / "dav", port)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_process(server)


def _wait_for_port(port: int, process: subprocess.Popen | None, what: str) -> None:
    deadline = time.monotonic() + 60  # a bound on waiting for start-up, not a timing assertion
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            alive = process is None or process.poll() is None
            assert alive and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.1)


@pytest.fixture
def postgres() -> Iterator[str]:
    """Run a real PostgreSQL 15 server (initdb/pg_ctl, as 'nobody' when we are root); yield its URL."""
    if not have_postgres():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    with postgres_server() as (url, _):
        yield url


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a moto S3 server; set the job environment for it; yield an empty bucket's URI."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    environment = {
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "pilot-test",
        "AWS_SECRET_ACCESS_KEY": "pilot-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    _wait_for_port(port, server, "moto S3 server")
    import boto3

    boto3.client("s3", endpoint_url=environment["S3_ENDPOINT_URL"]).create_bucket(Bucket="dbb")
    try:
        yield "s3://dbb/"
    finally:
        server.terminate()
        server.wait(timeout=30)


TOKEN = "s3cret-token"


@contextmanager
def serve(bundle_dir: Path, repo: Path, *args: str) -> Iterator[str]:
    """Run ``pilot serve`` on a free loopback port; yield its URL once it listens."""
    with serve_process(bundle_dir, repo, *args) as (url, _):
        yield url


@contextmanager
def serve_process(
    bundle_dir: Path, repo: Path, *args: str, log_name: str = "serve.log", log_level: str = "WARNING"
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``pilot serve`` on a free loopback port; yield its URL and process once it listens.

    Its stderr goes to ``log_name`` next to ``bundle_dir``: a pipe nobody reads would
    fill up and block the server's logging.
    """
    token_file = bundle_dir.parent / "token"
    token_file.write_text(TOKEN + "\n")
    port = _free_port()
    command = [sys.executable, "-m", "pilot.cli", "--log-level", log_level, "serve", str(bundle_dir)]
    command += ["--repo", str(repo), "--token-file", str(token_file), "--port", str(port), "--threads", "8"]
    command += args
    log_path = bundle_dir.parent / log_name
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once the socket is bound; nothing follows
        assert "queued" in line, log_path.read_text()
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGUSR2)  # dump its threads' stacks into the log
            time.sleep(1)
            server.kill()
            server.wait()
            pytest.fail(f"pilot serve did not stop on SIGTERM:\n{log_path.read_text()[-6000:]}")


def wait_for(condition, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 300  # a bound against hangs, not a timing assertion
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)
    return value


@dataclasses.dataclass
class BackgroundRun:
    """A ``pilot run`` in the background; its stderr goes to a file (an unread pipe could block it)."""

    proc: subprocess.Popen[str]
    workspace: Path
    repo_run: Path
    stderr: Path
    camp: Campaign

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
        while not condition():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, f"{what} never happened"
            time.sleep(0.05)

    def has_log(self, label: str) -> bool:
        """Whether a quantum of ``label`` finished (a quantum writes its log last)."""
        logs = self.repo_run / f"{label}_log"
        return logs.exists() and any(logs.iterdir())

    def finish(self) -> str:
        self.proc.wait(timeout=120)
        return self.stderr.read_text()


def start_run(
    tmp_path: Path, chain: tuple[TaskSpec, ...], *options: str, log_level: str = "WARNING"
) -> BackgroundRun:
    """Start ``pilot run`` in the background on a 4-detector bundle of ``chain``."""
    camp = make_campaign(tmp_path, chain, n_detectors=4)
    assert pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir).returncode == 0
    (bundle,) = camp.bundle_files()
    workspace = tmp_path / "ws"
    stderr = tmp_path / "stderr.log"
    with open(stderr, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pilot.cli", "--log-level", log_level, "run", str(bundle)]
            + ["--workspace", str(workspace), *options],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    return BackgroundRun(proc, workspace, workspace / bundle.stem / "repo" / "test" / "run1", stderr, camp)
