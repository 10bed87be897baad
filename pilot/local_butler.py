"""Quantum-backed butlers over the workspace's local datastore."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from lsst.daf.butler import QuantumBackedButler
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph


def workspace_butler(
    qg: PredictedQuantumGraph,
    local_repo: str,
    *,
    inputs: Iterable[uuid.UUID] = (),
    outputs: Iterable[uuid.UUID] = (),
) -> QuantumBackedButler:
    """Return a QBB over the workspace datastore that may read ``inputs`` and write ``outputs``.

    It reads in trust mode: a dataset's file is found at its templated location, so
    no datastore records are needed for files the workspace holds.
    """
    return QuantumBackedButler.from_predicted(
        config=local_repo,
        predicted_inputs=list(inputs),
        predicted_outputs=list(outputs),
        dimensions=qg.pipeline_graph.universe,
        datastore_records={},
        dataset_types={d.name: d.dataset_type for d in qg.pipeline_graph.dataset_types.values()},
    )
