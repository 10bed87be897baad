"""The chaining butler over a real quantum-backed butler and a real workspace datastore.

One campaign (a real DBB and quantum graph of mock PipelineTasks) is bundled with
``make_bundles`` (what ``pilot bundle`` runs); each test sets up its own workspace as
``pilot run`` does (local repo config, stage-in through the input cache) and opens a
`BundleSession` on it, then runs quanta through it or drives its butler directly.

The pipeline fans out, so one intermediate has two consumers in the bundle::

    raw -> a -> x -> b -> y
                  \\-> c -> z
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TaskSpec, make_campaign
from lsst.daf.butler import DatasetRef
from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.pipe.base.tests.mocks import MockDataset
from lsst.resources import ResourcePath

from pilot.bundle_model import Bundle, load_bundle
from pilot.central.bundling import make_bundles
from pilot.executor.bundle_session import BundleSession, SessionSpec
from pilot.executor.chaining_butler import ChainingButler
from pilot.qgraph_io import load_bundle_graph
from pilot.staging.input_cache import InputCache
from pilot.staging.stage_in import input_files, stage_in
from pilot.workspace import Workspace, input_cache_root, read_dbb_datastore

TASKS = (TaskSpec("a", "raw", "x"), TaskSpec("b", "x", "y"), TaskSpec("c", "x", "z"))
RUN = "test/run1"


@dataclasses.dataclass(frozen=True)
class PreparedBundle:
    """A bundle file of the whole campaign, and its graph."""

    bundle: Bundle
    uri: ResourcePath
    qg: PredictedQuantumGraph


@dataclasses.dataclass
class Opened:
    """A bundle session on a fresh workspace, and the workspace's datastore root."""

    session: BundleSession
    repo: Path

    @property
    def butler(self) -> ChainingButler:
        return self.session.butler

    def quantum(self, label: str, detector: int) -> uuid.UUID:
        """The ID of ``label``'s quantum for ``detector``."""
        (found,) = (
            q
            for q, node in self.session.qg.quantum_only_xgraph.nodes(data=True)
            if node["task_label"] == label and node["data_id"]["detector"] == detector
        )
        return found

    def run(self, label: str, detector: int) -> None:
        """Run one quantum through the session; it must succeed."""
        result = self.session.run(self.quantum(label, detector))
        assert result.status == "succeeded", result.exception_message

    def ref(self, dataset_type: str, detector: int) -> DatasetRef:
        """The ref of the ``dataset_type`` output of the bundle for ``detector``."""
        for quantum in self.session.quanta.values():
            for dataset, refs in quantum.outputs.items():
                for ref in refs:
                    if dataset.name == dataset_type and ref.dataId["detector"] == detector:
                        return ref
        raise LookupError(f"no {dataset_type} output for detector {detector}")

    def files(self, dataset_type: str) -> list[Path]:
        """Files of ``dataset_type`` in the workspace datastore's output run."""
        return sorted((self.repo / RUN / dataset_type).glob("*"))

    def file_of(self, dataset_type: str, detector: int) -> Path:
        return self.repo / RUN / dataset_type / f"{dataset_type}_DemoCam_S{detector:03d}_test_run1.json"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedBundle:
    camp = make_campaign(tmp_path_factory.mktemp("chaining"), TASKS, n_detectors=2)
    (path,) = make_bundles(str(camp.qgraph), str(camp.repo), camp.bundles_dir)
    uri = ResourcePath(str(path))
    bundle = load_bundle(uri)
    return PreparedBundle(bundle, uri, load_bundle_graph(bundle.qgraph_uri(uri), bundle.quantum_ids))


def open_session(prepared: PreparedBundle, area: Path, transient: tuple[str, ...] = ()) -> Opened:
    """Set up the bundle's workspace in ``area`` as ``pilot run`` does and open a session on it."""
    bundle = prepared.bundle
    workspace = Workspace.in_area(area, bundle.bundle_id)
    dbb = read_dbb_datastore(bundle.dbb.repo)
    local_repo = workspace.write_local_repo_config(dbb)
    quanta = prepared.qg.build_execution_quanta(bundle.quantum_ids)
    cache = InputCache(input_cache_root(area), dbb.root)
    staged = stage_in(input_files(quanta, dbb.name), dbb, workspace.repo, cache, verify=False)
    assert staged.stats.files == 2  # the two raws
    spec = SessionSpec(
        key=bundle.bundle_id,
        qgraph_uri=str(bundle.qgraph_uri(prepared.uri)),
        quantum_ids=tuple(bundle.quantum_ids),
        local_repo=str(local_repo),
        transient=transient,
        fresh_workspace=workspace.fresh,
    )
    return Opened(BundleSession(spec, prepared.qg), workspace.repo)


@pytest.fixture
def opened(prepared: PreparedBundle, tmp_path: Path) -> Iterator[Opened]:
    opened = open_session(prepared, tmp_path / "area")
    try:
        yield opened
    finally:
        opened.session.close()


@pytest.fixture
def opened_transient_x(prepared: PreparedBundle, tmp_path: Path) -> Iterator[Opened]:
    opened = open_session(prepared, tmp_path / "area", transient=("x",))
    try:
        yield opened
    finally:
        opened.session.close()


def mock_dataset(ref: DatasetRef) -> MockDataset:
    """An object of the mock storage class's Python type for ``ref``, made by the test."""
    return MockDataset(
        dataset_id=ref.id,
        dataset_type=ref.datasetType.to_simple(),
        data_id=dict(ref.dataId.required),
        run=ref.run,
    )


# -- copies and the object itself ---------------------------------------------------------


def test_earlier_consumers_get_copies_and_the_last_the_object_itself(opened: Opened) -> None:
    butler = opened.butler
    ref = opened.ref("x", 1)  # consumed by b and c of detector 1
    obj = mock_dataset(ref)
    assert butler.put(obj, ref) == ref
    assert butler.held() == [ref.id]
    assert opened.file_of("x", 1).exists()  # held in memory and persisted

    first = butler.get(ref)
    assert first is not obj and first == obj
    first.int_value = 99  # a task modifying its input ...
    assert obj.int_value is None  # ... does not touch what the next consumer will get
    assert butler.held() == [ref.id]

    last = butler.get(ref)
    assert last is obj
    assert last.int_value is None
    assert butler.held() == []
    assert butler.io.datasets_handed_in_memory == 2
    assert butler.io.bytes_read == 0

    # An unexpected further read goes to the datastore: equal, but a new object.
    again = butler.get(ref)
    assert again is not obj and again == obj
    size = opened.file_of("x", 1).stat().st_size
    assert butler.io.bytes_read == size
    assert butler.io.intermediate_bytes_read == size
    assert butler.io.datasets_handed_in_memory == 2


def test_deferred_reads_hand_over_copies_without_using_up_a_consumer(opened: Opened) -> None:
    butler = opened.butler
    ref = opened.ref("x", 0)
    obj = mock_dataset(ref)
    butler.put(obj, ref)
    handle = butler.getDeferred(ref)
    deferred = handle.get()
    assert deferred is not obj and deferred == obj
    assert butler.held() == [ref.id]
    assert butler.get(ref) is not obj  # still the first of two consumers
    assert butler.get(ref) is obj


def test_outputs_without_consumers_in_the_bundle_are_not_held(opened: Opened) -> None:
    butler = opened.butler
    ref = opened.ref("y", 0)  # a final product: no consumer in the bundle
    butler.put(mock_dataset(ref), ref)
    assert butler.held() == []
    assert opened.file_of("y", 0).exists()
    assert butler.io.files_written == 1


# -- real tasks through the session ----------------------------------------------------


def test_tasks_hand_the_intermediate_over_in_memory(opened: Opened) -> None:
    butler = opened.butler
    x = opened.ref("x", 0)
    opened.run("a", 0)
    assert butler.held() == [x.id]
    assert butler.stored(x) and butler.stored_many([x]) == {x: True}
    opened.run("b", 0)
    assert butler.held() == [x.id]  # c still needs it
    opened.run("c", 0)
    assert butler.held() == []
    io = butler.io
    assert io.datasets_handed_in_memory == 2
    assert io.intermediate_bytes_read == 0
    raw = opened.repo / "input_run" / "raw" / "raw_DemoCam_S000_input_run.json"  # staged in
    assert io.bytes_read == raw.stat().st_size  # the only read from disk
    assert io.files_written == 9  # x, y, z and each task's metadata and log
    assert io.transient_datasets_not_written == 0
    assert [p.name for p in opened.files("x")] == ["x_DemoCam_S000_test_run1.json"]
    # What b and c read really was a's output: the mock tasks record their inputs.
    for label, output in (("b", "y"), ("c", "z")):
        produced = butler.get(opened.ref(output, 0))
        assert produced.quantum is not None and produced.quantum.task_label == label
        (read,) = produced.quantum.inputs["input"]
        assert isinstance(read, MockDataset) and read.dataset_id == x.id
        assert read.run == RUN and read.output_connection_name == "output"  # a's output, not a raw


def test_evicted_dataset_is_read_back_from_the_workspace(opened: Opened) -> None:
    butler = opened.butler
    x = opened.ref("x", 1)
    opened.run("a", 1)
    assert butler.held() == [x.id]
    butler.evict([x.id, uuid.uuid4()])  # an ID it never held is ignored
    assert butler.held() == []
    read_before = butler.io.bytes_read
    opened.run("b", 1)
    size = opened.file_of("x", 1).stat().st_size
    assert butler.io.datasets_handed_in_memory == 0
    assert butler.io.intermediate_bytes_read == size
    assert butler.io.bytes_read == read_before + size


# -- transient dataset types --------------------------------------------------------------


def test_transient_dataset_is_handed_over_but_never_written(opened_transient_x: Opened) -> None:
    opened = opened_transient_x
    butler = opened.butler
    x = opened.ref("x", 0)
    opened.run("a", 0)
    assert butler.held() == [x.id]
    assert butler.io.transient_datasets_not_written == 1
    assert butler.io.files_written == 2  # a's metadata and log only
    assert opened.files("x") == []
    assert butler.stored(x)  # in memory counts as stored: b's input check passes
    opened.run("b", 0)
    opened.run("c", 0)
    assert butler.held() == []
    assert not butler.stored(x)  # gone with its last consumer, never on disk
    assert opened.files("x") == []
    assert [p.name for p in opened.files("y")] == ["y_DemoCam_S000_test_run1.json"]
    assert [p.name for p in opened.files("z")] == ["z_DemoCam_S000_test_run1.json"]
    assert butler.io.datasets_handed_in_memory == 2
    assert butler.io.intermediate_bytes_read == 0
    assert butler.io.files_written == 8
    records = butler.persisted_records()
    written = {dataset_id for data in records.values() for dataset_id in data.records}
    assert x.id not in written
    assert {opened.ref("y", 0).id, opened.ref("z", 0).id} <= written


# -- records for stage-out -------------------------------------------------------------------


def test_persisted_records_describe_every_file_written(opened: Opened) -> None:
    for detector in (0, 1):
        for label in ("a", "b", "c"):
            opened.run(label, detector)
    butler = opened.butler
    records = butler.persisted_records()
    (name,) = records  # the DBB's datastore name, kept by the workspace config
    expected = {
        ref.id
        for quantum in opened.session.quanta.values()
        for refs in quantum.outputs.values()
        for ref in refs
    }
    assert set(records[name].records) == expected
    paths = {
        info.path
        for tables in records[name].records.values()
        for rows in tables.values()
        for info in rows
        if isinstance(info, StoredFileInfo)
    }
    on_disk = {str(p.relative_to(opened.repo)) for p in (opened.repo / RUN).rglob("*") if p.is_file()}
    assert paths == on_disk
    assert len(on_disk) == butler.io.files_written == 18
    assert butler.io.bytes_written == sum((opened.repo / p).stat().st_size for p in on_disk)


def test_pruned_outputs_leave_the_records_and_the_disk(opened: Opened) -> None:
    """What a rerun's clobbering of partial outputs does (the records live in memory, not SQLite)."""
    opened.run("a", 0)
    butler = opened.butler
    x, metadata = opened.ref("x", 0), opened.ref("a_metadata", 0)
    butler.pruneDatasets([x], disassociate=True, unstore=True, purge=True)
    assert butler.held() == []
    assert not opened.file_of("x", 0).exists()
    assert not butler.stored(x) and butler.stored(metadata)
    (data,) = butler.persisted_records().values()
    assert x.id not in data.records and metadata.id in data.records
    butler.put(mock_dataset(x), x)  # written again, as the rerun of its quantum would
    assert opened.file_of("x", 0).exists()
    (data,) = butler.persisted_records().values()
    assert x.id in data.records
