"""Prepare the DBB for a quantum graph once, centrally (what ``pipetask pre-exec-init-qbb`` does).

This is the only step before ingest that writes the DBB registry: it registers the
graph's dataset types, the output RUN collection and the output CHAINED collection,
and writes init-outputs, task configs and software versions.
"""

from __future__ import annotations

import logging
import uuid

from lsst.daf.butler import Butler, CollectionType, DatasetRef
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph, PredictedQuantumGraphComponents

from ..errors import DBBError

_LOG = logging.getLogger(__name__)


def open_dbb(repo: str, *, writeable: bool, run: str | None = None) -> Butler:
    """Open the DBB butler, turning any failure into a one-line `DBBError`."""
    try:
        return Butler.from_config(repo, writeable=writeable, run=run)
    except Exception as err:
        raise DBBError(f"cannot open DBB repository {repo}: {type(err).__name__}: {err}") from None


def initialize_output_run(butler: Butler, components: PredictedQuantumGraphComponents) -> None:
    """Register dataset types and collections, write init-outputs, attach their records.

    After this, every init-input that the graph's tasks read from the DBB has its
    datastore records in the graph's init quanta, so a job can locate and fetch it
    without a registry.
    """
    qg = PredictedQuantumGraph(components)
    header = components.header
    run = header.output_run
    try:
        qg.pipeline_graph.register_dataset_types(butler)
        butler.collections.register(run, CollectionType.RUN)
        if header.output:
            _define_output_chain(butler, header.output, run, header.inputs)
        qg.init_output_run(butler)
    except Exception as err:
        raise DBBError(f"cannot initialize run {run!r} in the DBB: {type(err).__name__}: {err}") from None
    _attach_init_input_records(butler, qg, components)


def _define_output_chain(butler: Butler, output: str, run: str, inputs: list[str]) -> None:
    """Make ``output`` a CHAINED collection searching ``run`` first, as ``pipetask`` does."""
    if butler.collections.register(output, CollectionType.CHAINED):
        butler.collections.redefine_chain(output, [run, *inputs])
    else:
        butler.collections.prepend_chain(output, run)


def _attach_init_input_records(
    butler: Butler, qg: PredictedQuantumGraph, components: PredictedQuantumGraphComponents
) -> None:
    init_output_ids: set[uuid.UUID] = set()
    for label in qg.pipeline_graph.tasks:
        init_output_ids.update(ref.id for ref in qg.get_init_outputs(label).values())
    for init_quantum in components.init_quanta.root:
        if not init_quantum.task_label:
            continue
        refs: list[DatasetRef] = [
            ref for ref in qg.get_init_inputs(init_quantum.task_label).values() if ref.id in init_output_ids
        ]
        if not refs:
            continue
        # The datastore's own export is the only registry-free description of where
        # a file is; Butler has no public call returning DatastoreRecordData.
        exported = butler._datastore.export_records(refs)
        merged = DatastoreRecordData.merge_mappings(init_quantum.deserialize_datastore_records(), exported)
        init_quantum.datastore_records = {name: data.to_simple() for name, data in merged.items()}
        _LOG.debug("Attached records of %d init-inputs to %s.", len(refs), init_quantum.task_label)
