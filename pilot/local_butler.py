"""Quantum-backed butlers over the workspace's local datastore."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from lsst.daf.butler import QuantumBackedButler
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph


def workspace_butler(
    qg: PredictedQuantumGraph,
    local_repo: str,
    *,
    inputs: Iterable[uuid.UUID] = (),
    outputs: Iterable[uuid.UUID] = (),
    records: Mapping[str, DatastoreRecordData] | None = None,
) -> QuantumBackedButler:
    """Return a QBB over the workspace datastore that may read ``inputs`` and write ``outputs``.

    With the ``records`` of the files the workspace holds, lookups are fast; without
    them it reads in trust mode, finding each file at its templated location.
    """
    return QuantumBackedButler.from_predicted(
        config=local_repo,
        predicted_inputs=list(inputs),
        predicted_outputs=list(outputs),
        dimensions=qg.pipeline_graph.universe,
        datastore_records=dict(records or {}),
        dataset_types={d.name: d.dataset_type for d in qg.pipeline_graph.dataset_types.values()},
    )
