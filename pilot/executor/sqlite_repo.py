"""``execution.local_repo: sqlite``: a temporary Gen3 repo (SQLite registry) over the workspace datastore.

For tasks or tools that need a full `~lsst.daf.butler.Butler` rather than a
quantum-backed one.  Each bundle session (one per worker process that runs the
bundle's quanta) builds its own repo under ``<workspace>/sqlite-repo-<pid>/``
from the bundle's graph: the universe and dimension records, the dataset types,
the RUN collections, and the bundle's input refs with the datastore records the
graph carries.  No registry file is shared between processes, so no two
processes ever write one SQLite database.

The repo's datastore *is* the workspace datastore (same root, same name, same
templates), so a quantum writes its files where the quantum-backed path writes
them, and the records exported after each quantum go to the same stage-out.  The
datastore reads in trust mode: a dataset another worker wrote, or an earlier run
in this workspace, is found at its templated location although this registry
never saw it.  Intermediates are not handed over in memory in this mode.
"""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from lsst.daf.butler import Butler, CollectionType, Config, DatasetRef, Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from ..report import IoCounts
from .chaining_butler import NewOutputs, checksums_of, stored_size


def build_sqlite_repo(
    qg: PredictedQuantumGraph,
    quanta: Mapping[uuid.UUID, Quantum],
    local_repo: str,
    root: Path,
    records: Mapping[str, DatastoreRecordData],
) -> Butler:
    """Create a repo at ``root`` over the datastore of ``local_repo`` and fill it from the graph.

    ``root`` is removed first if it exists: the repo lives as long as the session.
    """
    shutil.rmtree(root, ignore_errors=True)
    local_config = ResourcePath(local_repo)
    datastore = Config(local_config)["datastore"]
    datastore["root"] = local_config.dirname().ospath
    datastore["trust_get_request"] = True
    config = Config({"datastore": datastore.toDict(), "registry": {"db": f"sqlite:///{root}/gen3.sqlite3"}})
    universe = qg.pipeline_graph.universe
    Butler.makeRepo(str(root), config=config, dimensionConfig=universe.dimensionConfig, forceConfigRoot=False)
    butler = Butler.from_config(str(root), writeable=True, run=qg.header.output_run)
    _insert_dimension_records(qg, butler)
    qg.pipeline_graph.register_dataset_types(butler)
    butler.collections.register(qg.header.output_run, CollectionType.RUN)
    produced = {ref.id for q in quanta.values() for refs in q.outputs.values() for ref in refs}
    inputs: dict[uuid.UUID, DatasetRef] = {}
    for quantum in quanta.values():
        for ref in [*(r for refs in quantum.inputs.values() for r in refs), *quantum.initInputs.values()]:
            if ref.id not in produced:
                inputs[ref.id] = ref
    _import_refs(butler, inputs.values())
    butler._datastore.import_records(records)
    return butler


def _insert_dimension_records(qg: PredictedQuantumGraph, butler: Butler) -> None:
    """Insert the graph's dimension records (those of its quanta's and datasets' data IDs)."""
    if qg.dimension_data is None:
        return
    records = qg.dimension_data.records
    for element in butler.dimensions.sorted(records.keys()):
        record_set = records[element.name]
        if record_set and record_set.element.has_own_table:
            butler.registry.insertDimensionData(record_set.element, *record_set, skip_existing=True)


def _import_refs(butler: Butler, refs: Iterable[DatasetRef]) -> None:
    """Register ``refs`` in their RUN collections (``_importDatasets`` takes one run and dimension set)."""
    groups: defaultdict[tuple[str, object], list[DatasetRef]] = defaultdict(list)
    for ref in refs:
        groups[ref.run, ref.datasetType.dimensions].append(ref)
    for run in {run for run, _ in groups}:
        butler.collections.register(run, CollectionType.RUN)
    for group in groups.values():
        butler._registry._importDatasets(group)  # type: ignore[attr-defined]


class SqliteRepoOutputs:
    """What the pilot asks of a session's butler (`ChainingButler`'s part of it), over a direct butler.

    The session names the quantum about to run (`expect`); after it, `take_new_outputs`
    exports the records of those of its outputs the datastore holds.
    """

    def __init__(self, butler: Butler, root: Path, *, hash_outputs: bool = True) -> None:
        self.butler = butler
        self.root = root
        self._hash_outputs = hash_outputs
        self._expected: list[DatasetRef] = []
        self.io = IoCounts()

    def expect(self, quantum: Quantum) -> None:
        """Note the outputs of the quantum about to run."""
        self._expected = [ref for refs in quantum.outputs.values() for ref in refs]

    def take_new_outputs(self) -> NewOutputs:
        """Records, sizes and checksums of the expected quantum's outputs that were written."""
        records = dict(self.butler._datastore.export_records(self._expected))
        self._expected = []
        size = stored_size(records)
        self.io.bytes_written += size
        self.io.files_written += sum(len(data.records) for data in records.values())
        root = self.butler._datastore.root  # type: ignore[attr-defined]
        return NewOutputs(records, checksums_of(records, root, hash_outputs=self._hash_outputs))

    def held(self) -> list[uuid.UUID]:
        """Nothing is held in memory in this mode."""
        return []

    def evict(self, dataset_ids: Iterable[uuid.UUID]) -> None:
        """Nothing to evict."""

    def stored_many(self, refs: Iterable[DatasetRef]) -> dict[DatasetRef, bool]:
        return self.butler.stored_many(refs)

    def pruneDatasets(
        self, refs: Iterable[DatasetRef], *, disassociate: bool, unstore: bool, purge: bool
    ) -> None:
        self.butler.pruneDatasets(refs, disassociate=disassociate, unstore=unstore, purge=purge)

    def close(self) -> None:
        """Close the butler and remove its repo (registry and config; the datastore is the workspace's)."""
        self.butler.close()
        shutil.rmtree(self.root, ignore_errors=True)
