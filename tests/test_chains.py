"""Chain finding and packing on real quantum graphs."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TaskSpec, build_graph, pilot, read_report
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

from pilot.central.chains import find_chains, iter_plans
from pilot.demo.campaign import create_dbb


def _graph(tmp_path: Path, n_detectors: int) -> PredictedQuantumGraph:
    repo = tmp_path / "dbb"
    create_dbb(repo, n_detectors)
    qgraph = build_graph(
        repo,
        "t/run",
        tmp_path / "g.qg",
        [TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y"), TaskSpec("c", "y", "z")],
    )
    return PredictedQuantumGraph.read_execution_quanta(qgraph)


def test_chains_are_per_detector_and_topological(tmp_path: Path) -> None:
    qg = _graph(tmp_path, 5)
    xgraph = qg.quantum_only_xgraph
    chains = find_chains(xgraph)
    assert len(chains) == 5
    for chain in chains:
        labels = [xgraph.nodes[q]["task_label"] for q in chain]
        assert labels == ["a", "b", "c"]
        assert len({xgraph.nodes[q]["data_id"]["detector"] for q in chain}) == 1

    plans = list(iter_plans(chains, xgraph, max_quanta=7))
    assert [len(p.quantum_ids) for p in plans] == [6, 6, 3]  # whole chains only
    assert all(not p.depends_on for p in plans)
    cut = list(iter_plans(chains, xgraph, max_quanta=2))  # each chain alone exceeds N: cut it
    assert all(len(p.quantum_ids) <= 2 for p in cut)
    assert sum(len(p.quantum_ids) for p in cut) == 15
    dependent = [p for p in cut if p.depends_on]
    assert dependent and all(min(p.depends_on) < cut.index(p) for p in dependent)


def test_bundle_cli_writes_standalone_graphs(tmp_path: Path) -> None:
    repo = tmp_path / "dbb"
    create_dbb(repo, 4)
    qgraph = build_graph(
        repo, "t/run", tmp_path / "g.qg", [TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y")]
    )
    out = tmp_path / "bundles"
    result = pilot("bundle", qgraph, "--repo", repo, "--out", out, "--max-quanta", "4")
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.json"))
    assert [f.name for f in files] == ["t_run-b00000.json", "t_run-b00001.json"]
    seen = set()
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["schema_version"] == 1 and doc["dbb"]["output_run"] == "t/run"
        sub = PredictedQuantumGraph.read_execution_quanta(path.with_suffix(".qg"))
        assert {str(q) for q in sub} == set(doc["quantum_ids"])
        seen.update(doc["quantum_ids"])
    full = PredictedQuantumGraph.read_execution_quanta(qgraph)
    assert seen == {str(q) for q in full}
    # Bundling twice is safe: the DBB's init-outputs are compared, not rewritten.
    again = pilot("bundle", qgraph, "--repo", repo, "--out", tmp_path / "again", "--max-quanta", "4")
    assert again.returncode == 0, again.stderr


def test_cut_chain_reads_upstream_bundle_outputs(tmp_path: Path) -> None:
    repo = tmp_path / "dbb"
    create_dbb(repo, 2)
    qgraph = build_graph(
        repo,
        "t/run",
        tmp_path / "g.qg",
        [TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y"), TaskSpec("c", "y", "z")],
    )
    out = tmp_path / "bundles"
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, "--max-quanta", "2").returncode == 0
    docs = {p: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    assert len(docs) == 4
    first, second = list(docs)[:2]
    assert docs[second]["depends_on"] == [docs[first]["bundle_id"]]

    early = pilot("run", "--processes", "0", second, "--workspace", tmp_path / "early")
    assert early.returncode == 12, early.stderr  # STAGE_IN_FAILED: upstream not committed yet
    assert f"consumes outputs of bundle {docs[first]['bundle_id']}" in early.stderr
    for path in docs:
        result = pilot("run", "--processes", "0", path, "--workspace", tmp_path / "ws" / path.stem)
        assert result.returncode == 0, result.stderr
    assert pilot("ingest", repo).returncode == 0
    from lsst.daf.butler import Butler

    with Butler.from_config(str(repo)) as butler:
        names = sorted(ref.datasetType.name for ref in butler.query_all_datasets("t/run", limit=None))
    assert names.count("z") == 2 and names.count("y") == 2 and names.count("c_metadata") == 2


def test_upstream_failure_blocks_downstream_bundle(tmp_path: Path) -> None:
    repo = tmp_path / "dbb"
    create_dbb(repo, 1)
    tasks = [
        TaskSpec("a", "raw", "x"),
        TaskSpec("b", "x", "y", fail_condition="detector = 0"),
        TaskSpec("c", "y", "z"),
    ]
    qgraph = build_graph(repo, "t/run", tmp_path / "g.qg", tasks)
    out = tmp_path / "bundles"
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, "--max-quanta", "2").returncode == 0
    upstream, downstream = sorted(out.glob("*.json"))
    assert pilot("run", "--processes", "0", upstream, "--workspace", tmp_path / "up").returncode == 10
    result = pilot("run", "--processes", "0", downstream, "--workspace", tmp_path / "down")
    assert result.returncode == 10, result.stderr  # QUANTA_FAILED, not a silent "no work" success
    (quantum,) = read_report(tmp_path / "down")["quanta"]
    assert quantum["status"] == "blocked"
    assert (
        quantum["caveat"]
        == "input y@{instrument: 'DemoCam', detector: 0} was not produced by its upstream bundle"
    )


def test_bundle_graph_holds_only_its_own_dimension_records(tmp_path: Path) -> None:
    repo = tmp_path / "dbb"
    create_dbb(repo, 4)
    qgraph = build_graph(
        repo, "t/run", tmp_path / "g.qg", [TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y")]
    )
    out = tmp_path / "bundles"
    assert pilot("bundle", qgraph, "--repo", repo, "--out", out, "--max-quanta", "2").returncode == 0
    assert not list(out.glob(".*")), "no partial files left behind"
    full = _records(PredictedQuantumGraph.read_execution_quanta(qgraph))
    assert len(full["detector"]) == 4
    first = sorted(out.glob("*.json"))[0]
    sub = PredictedQuantumGraph.read_execution_quanta(first.with_suffix(".qg"))
    sub.build_execution_quanta()  # every data ID still expands
    records = _records(sub)
    (detector,) = records["detector"]  # its one chain's detector, not all four
    assert {sub.quantum_only_xgraph.nodes[q]["data_id"]["detector"] for q in sub} == {detector[1]}
    assert sum(map(len, records.values())) < sum(map(len, full.values()))
    result = pilot("run", "--processes", "0", first, "--workspace", tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    assert [q["status"] for q in read_report(tmp_path / "ws")["quanta"]] == ["succeeded"] * 2


def _records(qg: PredictedQuantumGraph) -> dict[str, list]:
    """The graph's serialized dimension records (key values first), by element."""
    assert qg.dimension_data is not None
    return {element: rows for element, rows in qg.dimension_data.serialized().root.items() if rows}
