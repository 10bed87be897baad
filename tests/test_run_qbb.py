"""``pilot run-qbb`` is a drop-in for the ``pipetask run-qbb`` of BPS jobs.

The same graph, one DBB copy each: ``pipetask pre-exec-init-qbb``, then the job command
(stock ``pipetask run-qbb`` or ``pilot run-qbb`` with the options BPS passes), then BPS's
final job (``butler aggregate-graph``); both DBBs must then hold the same datasets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAILING_CHAIN, make_campaign, registered_datasets
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_same_datasets_as_pipetask_run_qbb(tmp_path: Path, processes: str) -> None:
    camp = make_campaign(tmp_path / "camp", FAILING_CHAIN, n_detectors=4)
    graph = PredictedQuantumGraph.open(str(camp.qgraph))
    with graph as reader:
        reader.read_thin_graph()
        ids = sorted(str(t.quantum_id) for qs in reader.components.thin_graph.quanta.values() for t in qs)
    registered = {}
    for executor in ("pipetask", "pilot"):
        repo = tmp_path / executor
        shutil.copytree(camp.repo, repo)
        init = _run(_tool("pipetask"), "pre-exec-init-qbb", repo, camp.qgraph)
        assert init.returncode == 0, init.stderr
        # As BPS formats runQuantumCommand: global options first, the cluster's IDs comma-separated.
        job = _run(
            _tool(executor),
            "--long-log",
            "--log-level=VERBOSE",
            "run-qbb",
            repo,
            camp.qgraph,
            "--qgraph-node-id",
            ",".join(ids),
            "-j",
            processes,
        )
        assert job.returncode == 1, job.stderr  # detector 2's calibrate fails, as pipetask reports it
        # BPS's final job, through the pilot's entry point that first registers the mocks' storage classes.
        final = _run(sys.executable, "-m", "pilot.bps.final_job", "aggregate-graph", camp.qgraph, repo)
        assert final.returncode == 0, final.stderr
        registered[executor] = registered_datasets(repo, camp.output_run)
    assert registered["pilot"] == registered["pipetask"]
    names = sorted({name for name, _ in registered["pilot"]})
    assert "src" in names and "calibrate_log" in names
    assert sum(name == "calexp" for name, _ in registered["pilot"]) == 3  # detector 2's failed


def test_bad_node_id_is_a_usage_error(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, FAILING_CHAIN[:1], n_detectors=1)
    result = _run(_tool("pilot"), "run-qbb", camp.repo, camp.qgraph, "--qgraph-node-id", "not-a-uuid")
    assert result.returncode == 2 and "--qgraph-node-id" in result.stderr
