"""A DBB whose datastore and staging area are in S3, on a real moto server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import CHAIN3, build_graph, pilot, read_report
from lsst.daf.butler import Butler, Config

from pilot.demo import create_dbb


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    deadline = time.monotonic() + 60  # a bound on waiting for start-up, not a timing assertion
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=environment["S3_ENDPOINT_URL"]).create_bucket(Bucket="dbb")
    try:
        yield "s3://dbb/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_bundle_through_s3_datastore(tmp_path: Path, s3_bucket: str) -> None:
    assert os.environ["S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    repo = tmp_path / "dbb"
    create_dbb(repo, 4, config=Config({"datastore": {"root": f"{s3_bucket}datastore/"}}))
    qgraph = build_graph(repo, "s3/run", tmp_path / "g.qg", CHAIN3)
    out = tmp_path / "bundles"
    staging = f"{s3_bucket}staging/"
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, "--staging", staging).returncode == 0
    (bundle,) = sorted(out.glob("*.json"))
    result = pilot("run", bundle, "--workspace", tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "ws")
    assert report["stage_in"]["files"] == 4  # the raws, fetched from S3
    assert report["stage_out"]["manifest"] == f"{staging}{bundle.stem}/manifest.json"

    result = pilot("ingest", repo, "--staging", staging)
    assert result.returncode == 0, result.stderr
    assert "ingested 36 datasets" in result.stdout
    with Butler.from_config(str(repo)) as butler:
        refs = butler.query_all_datasets("s3/run", limit=None)
        assert len(refs) == 36 + 4  # 12 quanta x (output, metadata, log) + 3 configs + packages
        src = next(ref for ref in refs if ref.datasetType.name == "src")
        assert butler.getURI(src).scheme == "s3"
        assert butler.get(src).dataset_id == src.id
    assert "the DBB is unchanged" in pilot("ingest", repo, "--staging", staging).stdout
