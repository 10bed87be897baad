"""The same end-to-end path against each kind of DBB, on real servers on 127.0.0.1.

A: sqlite registry + POSIX datastore; B: PostgreSQL registry + WebDAV datastore;
C: sqlite registry + S3 datastore (moto).  Bundle → run (stage-in from the DBB's
datastore, stage-out committed to its staging area) → ingest → query and read back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHAIN3, build_graph, pilot, read_report
from lsst.daf.butler import Butler, Config

from pilot.demo.campaign import create_dbb


def _dbb(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Config | None, str | None, str]:
    """Return (repo config, staging URI, expected datastore scheme) for DBB ``kind``."""
    match kind:
        case "A-sqlite-posix":
            return None, None, "file"
        case "B-postgres-webdav":
            url = request.getfixturevalue("webdav")
            db = request.getfixturevalue("postgres")
            config = Config({"registry": {"db": db}, "datastore": {"root": f"{url}datastore/"}})
            return config, f"{url}staging/", "http"
        case "C-sqlite-s3":
            bucket = request.getfixturevalue("s3_bucket")
            return Config({"datastore": {"root": f"{bucket}datastore/"}}), f"{bucket}staging/", "s3"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["A-sqlite-posix", "B-postgres-webdav", "C-sqlite-s3"])
def test_bundle_run_ingest(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    config, staging, scheme = _dbb(kind, request, tmp_path)
    repo = tmp_path / "dbb"
    create_dbb(repo, 4, config=config)
    qgraph = build_graph(repo, "e2e/run", tmp_path / "g.qg", CHAIN3)
    out = tmp_path / "bundles"
    staging_args = ["--staging", staging] if staging else []
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, *staging_args).returncode == 0
    (bundle,) = sorted(out.glob("*.json"))
    bundle_doc = bundle.read_text()
    assert "postgresql" not in bundle_doc  # a job never learns the registry's address
    result = pilot("run", "--processes", "0", bundle, "--workspace", tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "ws")
    assert report["stage_in"]["files"] == 4  # the raws, fetched from the DBB's datastore
    if staging:
        assert report["stage_out"]["manifest"] == f"{staging}{bundle.stem}/manifest.json"

    result = pilot("ingest", repo, *staging_args)
    assert result.returncode == 0, result.stderr
    assert "ingested 36 datasets" in result.stdout
    with Butler.from_config(str(repo)) as butler:
        refs = butler.query_all_datasets("e2e/run", limit=None)
        assert len(refs) == 36 + 4  # 12 quanta x (output, metadata, log) + 3 configs + packages
        src = next(ref for ref in refs if ref.datasetType.name == "src")
        assert butler.getURI(src).scheme == scheme
        assert butler.get(src).dataset_id == src.id
    assert "the DBB is unchanged" in pilot("ingest", repo, *staging_args).stdout
