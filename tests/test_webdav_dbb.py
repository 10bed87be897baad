"""A DBB whose datastore sits behind a real WebDAV server on 127.0.0.1: stage-in, stage-out, ingest."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHAIN3, build_graph, pilot, read_report
from lsst.daf.butler import Butler, Config

from pilot.demo import create_dbb


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[str]:
    """Serve ``tmp_path/dav`` over WebDAV; yield its root URL."""
    root = tmp_path / "dav"
    root.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "webdav_server.py"), str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30  # a bound on waiting for start-up, not a timing assertion
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "WebDAV server did not start"
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_bundle_through_webdav_datastore(tmp_path: Path, webdav: str) -> None:
    repo = tmp_path / "dbb"
    create_dbb(repo, 4, config=Config({"datastore": {"root": f"{webdav}datastore/"}}))
    qgraph = build_graph(repo, "dav/run", tmp_path / "g.qg", CHAIN3)
    out = tmp_path / "bundles"
    staging = f"{webdav}staging/"
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, "--staging", staging).returncode == 0
    (bundle,) = sorted(out.glob("*.json"))
    result = pilot("run", bundle, "--workspace", tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "ws")
    assert report["stage_in"]["files"] == 4  # the raws, fetched over HTTP
    assert report["stage_out"]["manifest"] == f"{staging}{bundle.stem}/manifest.json"
    assert (tmp_path / "dav" / "staging" / bundle.stem / "manifest.json").exists()

    result = pilot("ingest", repo, "--staging", staging)
    assert result.returncode == 0, result.stderr
    assert "ingested 36 datasets" in result.stdout
    with Butler.from_config(str(repo)) as butler:
        refs = butler.query_all_datasets("dav/run", limit=None)
        assert sorted({ref.datasetType.name for ref in refs}) == [
            "calexp",
            "calibrate_config",
            "calibrate_log",
            "calibrate_metadata",
            "isr_config",
            "isr_log",
            "isr_metadata",
            "measure_config",
            "measure_log",
            "measure_metadata",
            "packages",
            "postISRCCD",
            "src",
        ]
        src = next(ref for ref in refs if ref.datasetType.name == "src")
        assert butler.getURI(src).scheme == "http"  # stored in the WebDAV datastore
        assert butler.get(src).dataset_id == src.id
    again = pilot("ingest", repo, "--staging", staging)
    assert "the DBB is unchanged" in again.stdout
