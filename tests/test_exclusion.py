"""Per-task data-ID exclusion (``pilot bundle --exclude``) on real repos and real graphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_campaign, pilot, read_report
from lsst.daf.butler import Butler
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from pilot.central.exclusion import excluded_quanta
from pilot.central.graph_split import read_splittable_graph
from pilot.errors import ConfigError

MIDDLE = "calibrate:detector IN (2, 3)"


def _detectors(records: list, label: str) -> list[int]:
    return sorted(item.data_id["detector"] for item in records if item.task_label == label)


def test_excluded_quanta_are_the_matches_and_their_descendants(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path)
    xgraph = read_splittable_graph(ResourcePath(camp.qgraph)).xgraph  # what `pilot bundle` passes
    with Butler.from_config(str(camp.repo)) as butler:
        middle = excluded_quanta(butler, xgraph, {"calibrate": "detector IN (2, 3)"})
        by_record = excluded_quanta(butler, xgraph, {"isr": "detector.full_name = 'S004'"})
        nothing = excluded_quanta(butler, xgraph, {"measure": "detector > 100"})
        with pytest.raises(ConfigError) as unknown:
            excluded_quanta(butler, xgraph, {"calibrate": "detektor = 2"})
        with pytest.raises(ConfigError) as foreign:
            excluded_quanta(butler, xgraph, {"calibrate": "exposure = 2"})
        with pytest.raises(ConfigError) as no_label:
            excluded_quanta(butler, xgraph, {"calibrat": "detector = 2"})

    assert len(middle) == 4
    assert _detectors(middle, "isr") == [] and _detectors(middle, "calibrate") == [2, 3]
    assert _detectors(middle, "measure") == [2, 3]
    reasons = {(item.task_label, item.data_id["detector"]): item.reason for item in middle}
    assert reasons[("calibrate", 2)] == "excluded by calibrate: detector IN (2, 3)"
    assert reasons[("measure", 3)] == "downstream of excluded calibrate {instrument: 'DemoCam', detector: 3}"
    assert all(
        item.data_id == {"instrument": "DemoCam", "detector": item.data_id["detector"]} for item in middle
    )
    assert all(xgraph.nodes[item.quantum_id]["task_label"] == item.task_label for item in middle)
    # A dimension record's field works (the stack's query system evaluates it).
    assert [(item.task_label, item.data_id["detector"]) for item in by_record] == [
        ("isr", 4),
        ("calibrate", 4),
        ("measure", 4),
    ]
    assert nothing == []
    assert "calibrate" in str(unknown.value) and "detektor" in str(unknown.value)
    # A dimension the task's quanta do not have is refused, not silently joined in.
    assert str(foreign.value) == (
        "the exclusion expression for task 'calibrate' ('exposure = 2') names dimensions ['exposure'] "
        "that its quanta {instrument, detector} do not have"
    )
    assert str(no_label.value) == "cannot exclude quanta of task 'calibrat': it has no quanta in the graph"


def test_bundle_exclude_run_ingest(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path)
    result = pilot(
        "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, "--max-quanta", "6",
        "--exclude", MIDDLE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record_file = camp.bundles_dir / "excluded.jsonl"
    assert (
        f"excluded 4 quanta (2 of calibrate, 2 of measure); see {record_file}" in result.stderr.splitlines()
    )
    records = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert sorted((r["task_label"], r["data_id"]["detector"]) for r in records) == [
        ("calibrate", 2),
        ("calibrate", 3),
        ("measure", 2),
        ("measure", 3),
    ]
    assert {r["reason"] for r in records if r["task_label"] == "calibrate"} == {
        "excluded by calibrate: detector IN (2, 3)"
    }

    # The bundles hold exactly the other 14 quanta, upstream isr of detectors 2 and 3 included.
    full = PredictedQuantumGraph.read_execution_quanta(camp.qgraph)
    bundled = [q for path in camp.bundle_files() for q in json.loads(path.read_text())["quantum_ids"]]
    assert len(bundled) == len(set(bundled)) == 14
    assert set(bundled) == {str(q) for q in full} - {r["quantum_id"] for r in records}

    bundles = camp.bundle_files()
    run = pilot("run", "--processes", "0", *bundles, "--workspace", tmp_path / "ws")
    assert run.returncode == 0, run.stderr
    for path in bundles:
        report = read_report(tmp_path / "ws", path.stem)
        assert report["counts"]["succeeded"] == len(json.loads(path.read_text())["quantum_ids"])
    ingest = pilot("ingest", camp.repo)
    assert ingest.returncode == 0, ingest.stderr
    produced: dict[str, list[int]] = {}
    for name, data_id in camp.datasets_in_run():
        if name in ("postISRCCD", "calexp", "src"):
            produced.setdefault(name, []).append(int(data_id.split("detector: ")[1].rstrip("}")))
    assert produced == {"postISRCCD": [0, 1, 2, 3, 4, 5], "calexp": [0, 1, 4, 5], "src": [0, 1, 4, 5]}


def test_bundle_exclude_errors(tmp_path: Path) -> None:
    camp = make_campaign(tmp_path, n_detectors=2)

    def bundle(*exclusions: str) -> tuple[int, list[str]]:
        args = [arg for item in exclusions for arg in ("--exclude", item)]
        result = pilot("bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir, *args)
        return result.returncode, result.stderr.splitlines()

    assert bundle("calibrate:detector IN (2,") == (
        19,
        [
            "pilot: error: bad exclusion expression for task 'calibrate' ('detector IN (2,'): "
            "End of input reached while expecting further input"
        ],
    )
    assert bundle("nosuchtask:detector = 1") == (
        19,
        ["pilot: error: cannot exclude quanta of task 'nosuchtask': it has no quanta in the graph"],
    )
    assert bundle("calibrate detector = 1") == (
        2,
        [
            "pilot: error: --exclude 'calibrate detector = 1' is not LABEL:EXPRESSION "
            "(e.g. 'isr:detector IN (8, 9)')"
        ],
    )
    code, lines = bundle("isr:detector IN (0, 1)")
    assert code == 11 and len(lines) == 1 and "every one of the 6 quanta" in lines[0], lines
    assert not camp.bundles_dir.exists()  # every refusal came before anything was written
    assert camp.datasets_in_run() == []  # nor was the DBB initialized (no init-outputs)
    assert bundle("isr:detector = 1")[0] == 0
    assert ("isr_config", "{}") in camp.datasets_in_run()
