"""The stack's provenance quantum graph of a pilot run: written by ``pilot ingest``, read by the stack."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

from conftest import FAILING_CHAIN, TOKEN, make_campaign, pilot, read_report, serve, wait_for
from lsst.pipe.base import QuantumAttemptStatus
from lsst.pipe.base.quantum_graph import ProvenanceQuantumGraph, ProvenanceQuantumGraphReader

from pilot.central.provenance_graph import extras_uri, graph_uri, read_extras
from pilot.glidein.client import SchedulerClient
from pilot.protocol import Report, Slot

STACK_STATUS = {
    "succeeded": QuantumAttemptStatus.SUCCESSFUL,
    "failed": QuantumAttemptStatus.FAILED,
    "blocked": QuantumAttemptStatus.BLOCKED,
}


def _read_graph(path: str) -> ProvenanceQuantumGraph:
    with ProvenanceQuantumGraphReader.open(path) as reader:
        reader.read_full_graph()
        return reader.graph


def _check_quantum(graph: ProvenanceQuantumGraph, result: dict) -> None:
    """Status, inputs and outputs of one quantum in the graph agree with its report entry."""
    quantum_id = uuid.UUID(result["quantum_id"])
    info = graph.quantum_only_xgraph.nodes[quantum_id]
    assert info["task_label"] == result["task_label"]
    assert info["data_id"]["detector"] == result["data_id"]["detector"]
    assert info["status"] is STACK_STATUS[result["status"]], result
    xgraph = graph.bipartite_xgraph
    inputs = {xgraph.nodes[d]["dataset_type_name"] for d in xgraph.predecessors(quantum_id)}
    spec = next(spec for spec in FAILING_CHAIN if spec.label == result["task_label"])
    assert inputs == {spec.input}
    outputs = {d: xgraph.nodes[d] for d in xgraph.successors(quantum_id)}
    names = {node["dataset_type_name"] for node in outputs.values()}
    assert names == {spec.output, f"{spec.label}_metadata", f"{spec.label}_log"}
    produced = {node["dataset_type_name"] for node in outputs.values() if node["produced"]}
    reported = {uuid.UUID(i) for i in result["output_dataset_ids"]}
    assert {d for d, node in outputs.items() if node["produced"]} == reported
    if result["status"] == "succeeded":
        assert produced == names
        assert info["resource_usage"] is not None and info["resource_usage"].memory > 0
    elif result["status"] == "failed":
        assert produced == {f"{spec.label}_log"}  # the failure's log is staged and ingested
        # The stack names builtins unqualified ("ValueError"), the report fully ("builtins.ValueError").
        assert result["exception_type"].split(".")[-1] == info["exception"].type_name.split(".")[-1]
        assert info["exception"].message == result["exception_message"]
    else:
        assert produced == set() and info["attempts"] == []


def test_failing_run_provenance_graph_matches_reports(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, FAILING_CHAIN, n_detectors=6)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    bundles = camp.bundle_files()
    assert len(bundles) == 3
    workspace = tmp_path / "ws"
    for bundle in bundles[:2]:
        pilot("run", "--processes", "0", bundle, "--workspace", workspace)
    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    assert "test/run1: no provenance graph yet (6 quanta not ended)" in result.stdout
    graph_path = graph_uri(str(camp.repo), camp.output_run)
    assert not graph_path.exists()

    pilot("run", "--processes", "0", bundles[2], "--workspace", workspace)
    result = pilot("ingest", camp.repo)
    assert result.returncode == 0, result.stderr
    assert "test/run1: provenance graph written" in result.stdout
    graph = _read_graph(graph_path.ospath)
    reports = [read_report(workspace, bundle.stem) for bundle in bundles]
    results = [q for report in reports for q in report["quanta"]]
    assert len(results) == 18 and len(graph.quantum_only_xgraph) == 18
    assert sorted(q["status"] for q in results).count("failed") == 1
    assert sorted(q["status"] for q in results).count("blocked") == 1
    for quantum in results:
        _check_quantum(graph, quantum)

    extras = read_extras(str(camp.repo), camp.output_run)
    assert extras is not None and extras.provenance_graph == graph_path.basename()
    with ProvenanceQuantumGraphReader.open(graph_path.ospath) as reader:
        assert extras.provenance_dataset_id == reader.header.provenance_dataset_id
    for report in reports:
        for quantum in report["quanta"]:
            (run,) = extras.quanta[uuid.UUID(quantum["quantum_id"])].runs
            assert (run.bundle_id, run.status, run.host) == (
                report["bundle_id"],
                quantum["status"],
                report["host"],
            )
            assert (run.worker, run.max_rss_bytes, run.wall_seconds, run.cpu_seconds) == (
                quantum["worker"],
                quantum["max_rss_bytes"],
                quantum["wall_seconds"],
                quantum["cpu_seconds"],
            )

    # Nothing new: the graph is left as it is.
    result = pilot("ingest", camp.repo)
    assert "test/run1: provenance graph up to date" in result.stdout
    assert read_extras(str(camp.repo), camp.output_run) == extras

    # A rerun of a bundle commits a new attempt: the next ingest rebuilds graph and extras from it.
    pilot("run", "--processes", "0", bundles[1], "--workspace", tmp_path / "ws2")
    result = pilot("ingest", camp.repo)
    assert "test/run1: provenance graph written" in result.stdout
    rebuilt = read_extras(str(camp.repo), camp.output_run)
    assert rebuilt is not None and rebuilt.built_from != extras.built_from
    rerun = read_report(tmp_path / "ws2", bundles[1].stem)
    for quantum in rerun["quanta"]:
        (run,) = rebuilt.quanta[uuid.UUID(quantum["quantum_id"])].runs
        started = quantum["started_at"] and datetime.fromisoformat(quantum["started_at"])
        assert (run.status, run.started_at) == (quantum["status"], started)
    graph = _read_graph(graph_path.ospath)
    for quantum in results:
        _check_quantum(graph, quantum)


def test_scheduler_ingester_writes_the_provenance_graph(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path)
    result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6")
    assert result.returncode == 0, result.stderr
    extras_path = extras_uri(str(camp.repo), camp.output_run)
    with serve(camp.bundles_dir, camp.repo) as url:
        scheduler = SchedulerClient(url, TOKEN, retries=2, backoff=0.1)
        reports = []
        while (claim := scheduler.claim("p1", Slot(cores=2, memory_mb=8000, walltime_left_s=3600))).bundle:
            path = tmp_path / "claimed" / f"{claim.bundle['bundle_id']}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(claim.bundle))
            assert pilot("run", path, "--workspace", tmp_path / "ws", "--processes", "0").returncode == 0
            reports.append(read_report(tmp_path / "ws", path.stem))
            done = [q["quantum_id"] for q in reports[-1]["quanta"]]
            scheduler.report(
                claim.lease.lease_id,
                Report(status="succeeded", exit_code=0, succeeded_quantum_ids=done, staged=True),
            )
        wait_for(extras_path.exists, "the provenance graph")  # written after the last bundle's ingest
    assert len(reports) == 3
    graph = _read_graph(graph_uri(str(camp.repo), camp.output_run).ospath)
    statuses = {graph.quantum_only_xgraph.nodes[q]["status"] for q in graph.quantum_only_xgraph}
    assert len(graph.quantum_only_xgraph) == 18 and statuses == {QuantumAttemptStatus.SUCCESSFUL}
    extras = read_extras(str(camp.repo), camp.output_run)
    assert extras is not None
    assert {q["quantum_id"]: r["bundle_id"] for r in reports for q in r["quanta"]} == {
        str(qid): item.runs[-1].bundle_id for qid, item in extras.quanta.items()
    }
