"""The provenance record staged with every bundle: where it ran, with what, on what data.

``provenance.json`` sits next to the bundle's zip and ``report.json`` in its staging
attempt.  Per quantum it lists inputs and outputs by dataset type, data ID and
dataset ID, with the blake2b checksum and size of each file: inputs as fetched
(or as recorded by the DBB), outputs as written to the workspace and staged, and the
``ObservationInfo`` of its raw-like inputs (``pilot/executor/observation.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pydantic
from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

from ..report import ObservationRecord, QuantumResult, environment, now
from ..workspace import workspace_butler
from .input_cache import blake2b_of


class FileProvenance(pydantic.BaseModel):
    """One dataset (and its file, where the pilot knows it)."""

    dataset_type: str
    dataset_id: uuid.UUID
    run: str
    data_id: dict[str, int | str | None]
    size: int | None = None
    blake2b: str | None = None


class QuantumProvenance(pydantic.BaseModel):
    """Inputs and outputs of one quantum, and how it ended."""

    quantum_id: uuid.UUID
    task_label: str
    data_id: dict[str, int | str | None]
    status: str
    worker: int | None
    started_at: datetime | None
    ended_at: datetime | None
    inputs: list[FileProvenance]
    outputs: list[FileProvenance]
    observation: ObservationRecord | None = None
    """The ``ObservationInfo`` of its raw-like inputs, as in ``report.json``."""


class Provenance(pydantic.BaseModel):
    """The whole ``provenance.json``."""

    provenance_version: int = 1
    bundle_id: str
    output_run: str
    source_qgraph: str | None
    created_at: datetime
    host: str
    site: str | None
    platform: str
    python: str
    software: dict[str, str]
    quanta: list[QuantumProvenance]


def output_files(
    qg: PredictedQuantumGraph,
    local_repo: str,
    refs: list[DatasetRef],
    records: Mapping[str, DatastoreRecordData] | None,
    *,
    hash_files: bool = True,
) -> dict[uuid.UUID, tuple[int, str | None]]:
    """Size and blake2b checksum (if ``hash_files``) of each staged output's file in the workspace."""
    if not refs:
        return {}
    qbb = workspace_butler(qg, local_repo, outputs=(ref.id for ref in refs), records=records)
    found: dict[uuid.UUID, tuple[int, str | None]] = {}
    try:
        for ref in refs:
            path = Path(qbb._datastore.getURI(ref).ospath)
            found[ref.id] = (path.stat().st_size, blake2b_of(path) if hash_files else None)
    finally:
        qbb.close()
    return found


def build_provenance(
    *,
    bundle_id: str,
    output_run: str,
    source_qgraph: str | None,
    site: str | None,
    quanta: Mapping[uuid.UUID, Quantum],
    results: list[QuantumResult],
    input_checksums: Mapping[uuid.UUID, tuple[int, str | None]],
    outputs: Mapping[uuid.UUID, tuple[int, str | None]],
) -> Provenance:
    """Assemble the record from the run's results and the checksums gathered in staging."""
    files = {**input_checksums, **outputs}

    def describe(ref: DatasetRef) -> FileProvenance:
        size, digest = files.get(ref.id, (None, None))
        return FileProvenance(
            dataset_type=ref.datasetType.name,
            dataset_id=ref.id,
            run=ref.run,
            data_id=dict(ref.dataId.required),
            size=size,
            blake2b=digest,
        )

    entries = []
    for result in results:
        quantum = quanta[result.quantum_id]
        inputs = [ref for refs in quantum.inputs.values() for ref in refs]
        inputs.extend(quantum.initInputs.values())
        produced = [ref for refs in quantum.outputs.values() for ref in refs if ref.id in outputs]
        entries.append(
            QuantumProvenance(
                quantum_id=result.quantum_id,
                task_label=result.task_label,
                data_id=result.data_id,
                status=result.status,
                worker=result.worker,
                started_at=result.started_at,
                ended_at=result.ended_at,
                inputs=[describe(ref) for ref in inputs],
                outputs=[describe(ref) for ref in produced],
                observation=result.observation,
            )
        )
    return Provenance(
        bundle_id=bundle_id,
        output_run=output_run,
        source_qgraph=source_qgraph,
        created_at=now(),
        site=site,
        quanta=entries,
        **environment(),  # type: ignore[arg-type]
    )
