"""Acceptance: a quantum graph built outside the demo goes through the pilot like ``pipetask run-qbb``.

The graph is made by the real ``pipetask qgraph`` CLI from a pipeline YAML of three
pipe_base mock tasks over a repository loaded from daf_butler's LSSTCam test
registry data (2 exposures/visits x 2 detectors), not the demo's (instrument,
detector) repo and chain:

    isr                      (exposure, detector)  ext_raw -> post_isr_image
    calibrateImage           (visit, detector)     post_isr_image[multiple] -> visit_image, single_visit_star
                                                   init-output single_visit_star_schema
    consolidateVisitSummary  (visit)               single_visit_star[multiple] -> visit_summary
                                                   init-input single_visit_star_schema

``consolidateVisitSummary`` fans in both detectors of a visit, so the graph has
two chains (one per visit) of five quanta each, and ``--max-quanta 5`` makes one
bundle per chain.

The repository is copied before anything runs: DBB-P goes through ``pilot bundle``,
``pilot run`` (each bundle) and ``pilot ingest``; DBB-R through ``pipetask
pre-exec-init-qbb``, ``pipetask run-qbb`` and ``butler transfer-from-graph``.
Every command is the real CLI in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import pilot, read_report
from lsst.daf.butler import Butler, ButlerLogRecords, DatasetRef, DatasetType
from lsst.pipe.base import TaskMetadata
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.pipe.base.tests.mocks import DirectButlerRepo, MockDataset, MockStorageClass
from lsst.utils.packages import Packages

INPUT = "input_chain"
OUTPUT = "ext/out"
RUN = "ext/run"
MAX_QUANTA = 5
LABELS = ("isr", "calibrateImage", "consolidateVisitSummary")
EXPECTED_QUANTA = {"isr": 4, "calibrateImage": 4, "consolidateVisitSummary": 2}

PIPELINE_YAML = """\
description: External mock chain (exposure -> visit/detector -> visit fan-in), not the pilot demo.
tasks:
  isr:
    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask
    config:
      python: |
        from lsst.pipe.base.tests.mocks import DynamicConnectionConfig as C
        dims = ["instrument", "exposure", "detector"]
        config.dimensions = dims
        config.inputs["ccd"] = C(dataset_type_name="ext_raw", dimensions=dims)
        config.outputs["exposure"] = C(dataset_type_name="post_isr_image", dimensions=dims)
  calibrateImage:
    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask
    config:
      python: |
        from lsst.pipe.base.tests.mocks import DynamicConnectionConfig as C
        dims = ["instrument", "visit", "detector"]
        config.dimensions = dims
        config.inputs["exposures"] = C(
            dataset_type_name="post_isr_image",
            dimensions=["instrument", "exposure", "detector"],
            multiple=True,
        )
        config.outputs["exposure"] = C(dataset_type_name="visit_image", dimensions=dims)
        config.outputs["stars"] = C(dataset_type_name="single_visit_star", dimensions=dims)
        config.init_outputs["stars_schema"] = C(dataset_type_name="single_visit_star_schema", dimensions=[])
  consolidateVisitSummary:
    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask
    config:
      python: |
        from lsst.pipe.base.tests.mocks import DynamicConnectionConfig as C
        config.dimensions = ["instrument", "visit"]
        config.inputs["stars"] = C(
            dataset_type_name="single_visit_star",
            dimensions=["instrument", "visit", "detector"],
            multiple=True,
        )
        config.init_inputs["stars_schema"] = C(dataset_type_name="single_visit_star_schema", dimensions=[])
        config.outputs["summary"] = C(dataset_type_name="visit_summary", dimensions=["instrument", "visit"])
"""

DatasetKey = tuple[str, tuple[tuple[str, object], ...], uuid.UUID]


def lsst_cli(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run an LSST stack CLI (``pipetask``, ``butler``) from this venv in a subprocess."""
    command = [str(Path(sys.executable).parent / tool), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert a CLI subprocess succeeded, showing its output if not."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result


def key(ref: DatasetRef) -> DatasetKey:
    """(dataset type, data ID, UUID) of a ref, comparable across repositories."""
    return ref.datasetType.name, tuple(sorted(ref.dataId.required.items())), ref.id


def make_repo(repo: Path) -> None:
    """Create a DBB from daf_butler's LSSTCam test data, with mock raws for every (exposure, detector)."""
    Butler.makeRepo(str(repo))
    with Butler.from_config(str(repo), writeable=True) as butler:
        mock_repo = DirectButlerRepo(butler, "lsstcam-subset.yaml", use_import_collections_as_input=False)
        raw_type = DatasetType(
            "ext_raw",
            ["instrument", "exposure", "detector"],
            MockStorageClass.get_or_register_mock("StructuredDataDict").name,
            universe=butler.dimensions,
        )
        assert len(mock_repo.insert_datasets(raw_type)) == 4


def parse_query_datasets(stdout: str) -> dict[tuple[str, uuid.UUID], dict[str, str]]:
    """Parse ``butler query-datasets`` tables into {(type, id): {column: value}}."""
    rows: dict[tuple[str, uuid.UUID], dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", stdout.strip()):
        lines = [line for line in block.splitlines() if line.strip()]
        if len(lines) < 3 or not set(lines[1]) <= {"-", " "}:
            continue
        header = lines[0].split()
        for line in lines[2:]:
            row = dict(zip(header, line.split(), strict=True))
            rows[(row["type"], uuid.UUID(row["id"]))] = row
    return rows


@dataclasses.dataclass
class Executed:
    """The graph, both DBBs after execution, and what the pilot reported."""

    root: Path
    qgraph: Path
    pilot_repo: Path
    reference_repo: Path
    bundles: list[Path]
    reports: list[dict]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Executed:
    root = tmp_path_factory.mktemp("external_graph")
    repo = root / "dbb"
    make_repo(repo)
    pipeline = root / "pipeline.yaml"
    pipeline.write_text(PIPELINE_YAML)
    qgraph = root / "graph.qg"
    ok(
        lsst_cli(
            "pipetask", "qgraph", "-b", repo, "-p", pipeline, "-i", INPUT, "-o", OUTPUT,
            "--output-run", RUN, "--qgraph-datastore-records", "--save-qgraph", qgraph,
        )
    )  # fmt: skip
    pilot_repo = root / "dbb-pilot"
    reference_repo = root / "dbb-reference"
    shutil.copytree(repo, pilot_repo)
    shutil.copytree(repo, reference_repo)

    # Reference: what the LSST stack itself does with the graph.
    ok(lsst_cli("pipetask", "pre-exec-init-qbb", reference_repo, qgraph))
    ok(lsst_cli("pipetask", "run-qbb", reference_repo, qgraph, "-j", "1"))
    ok(
        lsst_cli(
            "butler", "transfer-from-graph", qgraph, reference_repo,
            "--register-dataset-types", "--update-output-chain",
        )
    )  # fmt: skip

    # The pilot, run as an operator would (default options).
    bundle_dir = root / "bundles"
    listed = ok(
        pilot("bundle", qgraph, "--repo", pilot_repo, "--out", bundle_dir, "--max-quanta", MAX_QUANTA)
    )
    bundles = [Path(line) for line in listed.stdout.splitlines()]
    assert bundles == sorted(bundle_dir.glob("*.json"))
    reports = []
    for bundle in bundles:
        workspace = root / "workspaces" / bundle.stem
        ok(pilot("run", "--processes", "0", bundle, "--workspace", workspace))
        reports.append(read_report(workspace))
    ok(pilot("ingest", pilot_repo))
    return Executed(root, qgraph, pilot_repo, reference_repo, bundles, reports)


@pytest.fixture(scope="module")
def graph(executed: Executed) -> PredictedQuantumGraph:
    return PredictedQuantumGraph.read_execution_quanta(executed.qgraph)


@pytest.fixture(scope="module")
def predicted(graph: PredictedQuantumGraph) -> dict[uuid.UUID, DatasetRef]:
    """Every dataset the graph predicts in the run: quantum outputs (with logs, metadata), init-outputs."""
    refs: dict[uuid.UUID, DatasetRef] = {}
    for quantum in graph.build_execution_quanta().values():
        for output_refs in quantum.outputs.values():
            refs.update((ref.id, ref) for ref in output_refs)
    for label in ["", *graph.pipeline_graph.tasks]:
        refs.update((ref.id, ref) for ref in graph.get_init_outputs(label).values())
    return refs


@pytest.fixture(scope="module")
def butlers(executed: Executed) -> Iterator[tuple[Butler, Butler]]:
    """Read-only butlers on (DBB-P, DBB-R)."""
    MockStorageClass.get_or_register_mock("StructuredDataDict")
    with ExitStack() as stack:
        yield (
            stack.enter_context(Butler.from_config(str(executed.pilot_repo))),
            stack.enter_context(Butler.from_config(str(executed.reference_repo))),
        )


def test_graph_is_external_and_bundled_by_chain(
    executed: Executed, graph: PredictedQuantumGraph, predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """The graph is the intended one, and the pilot ran each of its quanta exactly once, successfully."""
    assert graph.header.output_run == RUN
    assert {label: len(quanta) for label, quanta in graph.quanta_by_task.items()} == EXPECTED_QUANTA
    # 3 tasks x (outputs + log + metadata) + 3 configs + schema + packages.
    assert len(predicted) == 4 * 3 + 4 * 4 + 2 * 3 + 5
    names = {ref.datasetType.name for ref in predicted.values()}
    for label in LABELS:
        assert {f"{label}_log", f"{label}_metadata", f"{label}_config"} <= names

    assert len(executed.bundles) == 2
    seen: list[uuid.UUID] = []
    for report in executed.reports:
        assert report["status"] == "succeeded" and report["exit_code"] == 0
        # Each bundle holds one whole visit chain: its fan-in quantum included.
        assert report["counts"] == {"succeeded": MAX_QUANTA, "failed": 0, "blocked": 0, "not_run": 0}
        assert report["tasks"]["consolidateVisitSummary"]["succeeded"] == 1
        for quantum in report["quanta"]:
            assert quantum["status"] == "succeeded" and quantum["caveat"] is None, quantum
            seen.append(uuid.UUID(quantum["quantum_id"]))
    assert sorted(seen) == sorted(graph)


def test_query_datasets_lists_every_predicted_dataset(
    executed: Executed, predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """``butler query-datasets DBB-P --collections RUN`` lists every predicted output, log, metadata."""
    result = ok(
        lsst_cli("butler", "query-datasets", executed.pilot_repo, "*", "--collections", RUN, "--limit", "0")
    )
    listed = parse_query_datasets(result.stdout)
    expected = {(ref.datasetType.name, ref.id): ref for ref in predicted.values()}
    assert set(listed) == set(expected)
    for (name, dataset_id), row in listed.items():
        ref = expected[(name, dataset_id)]
        assert row["run"] == RUN
        assert {dim: row[dim] for dim in ref.dataId.required} == {
            dim: str(value) for dim, value in ref.dataId.required.items()
        }


def test_same_datasets_as_run_qbb(
    butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """DBB-P's and DBB-R's RUN hold the same (type, data ID, UUID) set: exactly the graph's prediction."""
    pilot_butler, reference_butler = butlers
    in_pilot = {key(ref) for ref in pilot_butler.query_all_datasets(RUN, limit=None)}
    in_reference = {key(ref) for ref in reference_butler.query_all_datasets(RUN, limit=None)}
    assert in_pilot == in_reference
    assert in_pilot == {key(ref) for ref in predicted.values()}


def test_output_chain_searches_like_run_qbb(butlers: tuple[Butler, Butler]) -> None:
    """The output CHAINED collection resolves to the same search path (RUN, then the inputs)."""
    pilot_butler, reference_butler = butlers
    flattened = [b.collections.query(OUTPUT, flatten_chains=True) for b in butlers]
    assert flattened[0] == flattened[1] == [RUN, "input_run"]
    assert (
        pilot_butler.collections.get_info(OUTPUT).type == reference_butler.collections.get_info(OUTPUT).type
    )


def test_output_contents_equal_run_qbb(
    butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """Every non-log, non-metadata output reads back identically from DBB-P and DBB-R.

    Mock datasets carry only graph-determined provenance (UUIDs, data IDs, run, the
    producing quantum and its inputs), so they must be equal field for field; so must
    task configs.  ``packages`` is the one legitimate difference: it records the
    modules imported by the process that wrote it (``pilot bundle`` vs ``pipetask
    pre-exec-init-qbb``), so only the versions of packages both saw are compared.
    """
    pilot_butler, reference_butler = butlers
    compared: dict[str, int] = {}
    for ref in predicted.values():
        name = ref.datasetType.name
        if name.endswith(("_log", "_metadata")):
            continue
        in_pilot = pilot_butler.get(pilot_butler.get_dataset(ref.id))
        in_reference = reference_butler.get(reference_butler.get_dataset(ref.id))
        if name == "packages":
            assert isinstance(in_pilot, Packages) and isinstance(in_reference, Packages)
            assert {"daf_butler", "pipe_base", "python"} <= in_pilot.keys() & in_reference.keys()
            assert in_pilot.difference(in_reference) == {}
        elif name.endswith("_config"):
            assert type(in_pilot) is type(in_reference)
            assert in_pilot == in_reference, name
        else:
            assert isinstance(in_pilot, MockDataset) and isinstance(in_reference, MockDataset)
            # Mock init-outputs are built in the task constructor, which knows no dataset ID.
            assert in_pilot.dataset_id == (None if name == "single_visit_star_schema" else ref.id)
            assert in_pilot.model_dump() == in_reference.model_dump(), name
        compared[name] = compared.get(name, 0) + 1
    assert compared == {
        "post_isr_image": 4,
        "visit_image": 4,
        "single_visit_star": 4,
        "visit_summary": 2,
        "single_visit_star_schema": 1,
        "isr_config": 1,
        "calibrateImage_config": 1,
        "consolidateVisitSummary_config": 1,
        "packages": 1,
    }


def _task_label(ref: DatasetRef) -> str:
    return ref.datasetType.name.rsplit("_", 1)[0]


def test_metadata_readable_with_same_stable_content(
    butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """Task metadata exist in both, for the same task; their timing-free parts agree.

    Timings, RSS and host differ run to run.  What does not: the task-label and
    ``quantum`` sections, the outputs each quantum wrote, its caveats, and its
    butler get/put counts.  (``pipetask run-qbb`` also adds a ``job`` section with
    graph read time/size; the pilot passes no job metadata, so it is not compared.)
    """
    refs = [ref for ref in predicted.values() if ref.datasetType.name.endswith("_metadata")]
    assert len(refs) == 10
    for ref in refs:
        label = _task_label(ref)
        pair = [b.get(b.get_dataset(ref.id)) for b in butlers]
        for metadata in pair:
            assert isinstance(metadata, TaskMetadata)
            assert {label, "quantum"} <= set(metadata.keys()), ref
        quantum_pilot, quantum_reference = (metadata["quantum"] for metadata in pair)
        outputs = set(quantum_pilot.getArray("outputs"))
        assert outputs == set(quantum_reference.getArray("outputs")) != set()
        assert quantum_pilot["caveats"] == quantum_reference["caveats"]
        counts = [
            {k: v for k, v in q["butler_metrics"].to_dict().items() if k.startswith("n_")}
            for q in (quantum_pilot, quantum_reference)
        ]
        assert counts[0] == counts[1]


def _log_lines(records: ButlerLogRecords) -> list[tuple[str, str, str]]:
    """(logger, level, message) with durations masked."""
    return [
        (r.name, r.levelname, re.sub(r"took [0-9.]+ seconds", "took N seconds", r.message)) for r in records
    ]


def test_logs_readable_for_same_task(
    butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """Task logs exist and are readable in both; any record naming a task names the log's own task."""
    refs = [ref for ref in predicted.values() if ref.datasetType.name.endswith("_log")]
    assert len(refs) == 10
    for ref in refs:
        label = _task_label(ref)
        pilot_log, reference_log = (b.get(b.get_dataset(ref.id)) for b in butlers)
        assert isinstance(pilot_log, ButlerLogRecords) and isinstance(reference_log, ButlerLogRecords)
        assert any(f"label={label} " in record.message for record in reference_log)
        for records in (pilot_log, reference_log):
            for record in records:
                for named in re.findall(r"label=(\w+)|task '(\w+)'", record.message):
                    assert label in named, (ref, record.message)


def test_logs_capture_what_run_qbb_captures(
    butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """A task log from the pilot holds the same records as run-qbb's (durations masked)."""
    for ref in predicted.values():
        if ref.datasetType.name.endswith("_log"):
            pilot_log, reference_log = (b.get(b.get_dataset(ref.id)) for b in butlers)
            assert _log_lines(pilot_log) == _log_lines(reference_log), ref


def test_chain_cut_across_bundles(
    executed: Executed, butlers: tuple[Butler, Butler], predicted: dict[uuid.UUID, DatasetRef]
) -> None:
    """With --max-quanta below the chain length, each chain is cut into dependent bundles.

    Run in dependency order (ingesting after each level, as ``depends_on`` asks), the
    bundles still produce every predicted dataset, with the same content as run-qbb:
    a dependent bundle must get the upstream bundle's outputs, which the graph holds
    no datastore records for.  Without that, its quanta would end in ``NoWorkFound``
    ("no work found", exit 0) and their outputs would be silently missing.
    """
    repo = executed.root / "dbb-cut"
    shutil.copytree(executed.root / "dbb", repo)  # "dbb" itself was never executed against
    bundle_dir = executed.root / "bundles-cut"
    ok(pilot("bundle", executed.qgraph, "--repo", repo, "--out", bundle_dir, "--max-quanta", "3"))
    documents = {path: json.loads(path.read_text()) for path in sorted(bundle_dir.glob("*.json"))}
    assert len(documents) == 4 and sum(bool(doc["depends_on"]) for doc in documents.values()) == 2
    done: set[str] = set()
    while len(done) < len(documents):
        ready = [
            path
            for path, doc in documents.items()
            if doc["bundle_id"] not in done and set(doc["depends_on"]) <= done
        ]
        assert ready, "bundle dependencies form a cycle"
        for path in ready:
            workspace = executed.root / "workspaces-cut" / path.stem
            ok(pilot("run", "--processes", "0", path, "--workspace", workspace))
            for quantum in read_report(workspace)["quanta"]:
                assert quantum["status"] == "succeeded" and quantum["caveat"] is None, (path.stem, quantum)
        ok(pilot("ingest", repo))
        done.update(documents[path]["bundle_id"] for path in ready)
    _, reference_butler = butlers
    with Butler.from_config(str(repo)) as butler:
        assert {key(ref) for ref in butler.query_all_datasets(RUN, limit=None)} == {
            key(ref) for ref in predicted.values()
        }
        for ref in predicted.values():
            if isinstance(ref.datasetType.storageClass, MockStorageClass):
                in_cut = butler.get(butler.get_dataset(ref.id))
                in_reference = reference_butler.get(reference_butler.get_dataset(ref.id))
                assert in_cut.model_dump() == in_reference.model_dump(), ref
