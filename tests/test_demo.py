"""``pilot demo``: the whole main job on its embedded default, twice in the same directory."""

from __future__ import annotations

from pathlib import Path

from conftest import pilot
from lsst.daf.butler import Butler
from lsst.pipe.base import QuantumAttemptStatus
from lsst.pipe.base.quantum_graph import ProvenanceQuantumGraphReader


def test_demo_runs_twice(tmp_path: Path) -> None:
    first = pilot("demo", tmp_path / "demo", "--detectors", "20", "--sleep", "0")
    assert first.returncode == 0, first.stderr
    assert "every quantum succeeded" in first.stdout
    assert "60 quanta" in first.stdout
    total = [line.split() for line in first.stdout.splitlines() if line.startswith("TOTAL")]
    assert total == [["TOTAL", "60", "0", "0", "0"]]
    assert "184 datasets registered" in first.stdout  # 60 x 3 + 3 configs + packages
    assert "provenance graph written" in first.stdout
    (graph_path,) = (tmp_path / "demo" / "dbb" / "pilot-provenance" / "demo").glob("*.qg")
    with ProvenanceQuantumGraphReader.open(graph_path) as reader:
        reader.read_quanta()
    statuses = [reader.graph.quantum_only_xgraph.nodes[q]["status"] for q in reader.graph.quantum_only_xgraph]
    assert statuses == [QuantumAttemptStatus.SUCCESSFUL] * 60

    second = pilot("demo", tmp_path / "demo", "--detectors", "20", "--sleep", "0")
    assert second.returncode == 0, second.stderr
    assert "already ingested" in second.stdout  # the first run's bundles are not ingested again
    with Butler.from_config(str(tmp_path / "demo" / "dbb")) as butler:
        runs = sorted(butler.collections.query("demo/run*"))
        assert len(runs) == 2
        for run in runs:
            assert len(butler.query_all_datasets(run, limit=None)) == 184
        assert butler.collections.get_info("demo").children[:1] == (runs[1],)


def test_demo_through_bps_submit(tmp_path: Path) -> None:
    """``pilot demo --bps``: a real ``bps submit`` (Parsl on loopback) with ``pilot run-qbb`` jobs."""
    result = pilot("demo", tmp_path / "demo", "--bps", "--detectors", "3", "--sleep", "0", "--processes", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:5]}
    assert rows == {label: ["3", "3", "3"] for label in ("isr", "calibrateImage", "measureSources")}
    submit = (tmp_path / "demo" / "bps-submit.yaml").read_text()
    assert "pilot.bps.parsl_local.LoopbackLocal" in submit and "pilot {runPreCmdOpts} run-qbb" in submit
    jobs = sorted((tmp_path / "demo" / "submit").glob("demo-bps/*/logs/chain/*.stderr"))
    assert len(jobs) == 3 and all("run-qbb: 3 of 3 quanta succeeded" in job.read_text() for job in jobs)
    with Butler.from_config(str(tmp_path / "demo" / "dbb")) as butler:
        (run,) = butler.collections.query("demo-bps/*")
        assert len(butler.query_all_datasets(run, limit=None)) == 3 * 3 * 3 + 3 + 1  # + configs, packages
