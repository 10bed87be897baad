"""Stage-out: a bundle's outputs go to the DBB staging area as one committed unit.

Layout under the staging root (default ``<repo>/pilot-staging/``)::

    <bundle_id>/<attempt>/<dataset-ids-hash>.zip   outputs, in the zip format ``Butler.ingest_zip`` takes
    <bundle_id>/<attempt>/report.json              the bundle report
    <bundle_id>/<attempt>/provenance.json          host, site, software, per-quantum files and checksums
    <bundle_id>/manifest.json                      written last and atomically: the commit

Nothing is visible to ``pilot ingest`` until ``manifest.json`` exists, and it only
ever names a complete attempt.  Staging again (a rerun, or a retry after a crash)
writes a new attempt and replaces the manifest; dataset IDs come from the quantum
graph, so ingest registers each dataset once whichever attempt it reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydantic
from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from stagers.base import Stager, TransferError
from stagers.registry import stager_for

from ..errors import PluginNotFound, StageOutError
from ..report import QuantumResult, StageOutRecord, TransferStats, now
from ..workspace import workspace_butler
from .retry import RetryCounter, RetryPolicy, with_retries

_LOG = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class Manifest(pydantic.BaseModel):
    """The commit record of one staged bundle."""

    manifest_version: int = 1
    bundle_id: str
    output_run: str
    attempt: str
    zip: str | None = pydantic.Field(description="Zip path relative to the bundle's staging directory.")
    zip_size: int = 0
    zip_sha256: str | None = None
    n_datasets: int = 0
    report: str
    provenance: str | None = None
    committed_at: str


def produced_refs(
    qg: PredictedQuantumGraph,
    quanta: Mapping[uuid.UUID, Quantum],
    results: Iterable[QuantumResult],
    local_repo: str,
    records: Mapping[str, DatastoreRecordData] | None = None,
) -> list[DatasetRef]:
    """Return the refs to stage: every output of succeeded quanta, and the logs of failed ones.

    Only datasets actually present in the local datastore are returned.  Refs use
    the DBB's (pipeline graph's) dataset type definitions, not a task's storage
    class override.
    """
    wanted: dict[uuid.UUID, DatasetRef] = {}
    for result in results:
        if result.status not in ("succeeded", "failed"):
            continue
        log_name = qg.pipeline_graph.tasks[result.task_label].log_output
        for refs in quanta[result.quantum_id].outputs.values():
            for ref in refs:
                if result.status == "failed" and (
                    log_name is None or ref.datasetType.name != log_name.dataset_type_name
                ):
                    continue
                registry_type = qg.pipeline_graph.dataset_types[ref.datasetType.name].dataset_type
                wanted[ref.id] = ref.overrideStorageClass(registry_type.storageClass_name)
    if not wanted:
        return []
    qbb = workspace_butler(qg, local_repo, outputs=wanted.keys(), records=records)
    try:
        stored = qbb.stored_many(wanted.values())
    finally:
        qbb.close()
    return [ref for ref, present in stored.items() if present]


def stage_out(
    *,
    qg: PredictedQuantumGraph,
    refs: list[DatasetRef],
    bundle_id: str,
    output_run: str,
    local_repo: str,
    work_dir: Path,
    report_json: bytes,
    provenance_json: bytes | None = None,
    staging_root: ResourcePath,
    records: Mapping[str, DatastoreRecordData] | None = None,
    retry: RetryPolicy | None = None,
) -> StageOutRecord:
    """Zip ``refs`` from the local datastore, upload zip, report and provenance, then commit.

    Transient transfer failures are retried per ``retry`` (counted in the record).

    Raises
    ------
    StageOutError
        Anything went wrong; the workspace still holds every output, and no manifest
        naming an incomplete attempt was written.
    """
    stats = TransferStats()
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    zip_path: ResourcePath | None = None
    if refs:
        qbb = workspace_butler(qg, local_repo, outputs=(ref.id for ref in refs), records=records)
        try:
            zip_path = qbb.retrieve_artifacts_zip(refs, ResourcePath(work_dir, forceDirectory=True))
        except Exception as err:
            raise StageOutError(f"cannot assemble the output zip in {work_dir}: {err}") from None
        finally:
            qbb.close()
    bundle_dir = staging_root.join(f"{bundle_id}/", forceDirectory=True)
    attempt = f"attempt-{now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    attempt_dir = bundle_dir.join(f"{attempt}/", forceDirectory=True)
    report_local = ResourcePath(work_dir / "report.json")
    report_local.write(report_json, overwrite=True)
    provenance_local = ResourcePath(work_dir / "provenance.json")
    if provenance_json is not None:
        provenance_local.write(provenance_json, overwrite=True)
    retry = retry or RetryPolicy()
    counter = RetryCounter()

    def upload(source: ResourcePath, destination: ResourcePath) -> int:
        return with_retries(
            retry, f"upload of {destination}", lambda: _upload(stager, source, destination, stats), counter
        )

    try:
        stager = stager_for(bundle_dir)
        zip_name: str | None = None
        zip_sha256: str | None = None
        zip_size = 0
        if zip_path is not None:
            zip_name = f"{attempt}/{zip_path.basename()}"
            zip_sha256 = _sha256(Path(zip_path.ospath))
            zip_size = upload(zip_path, attempt_dir.join(zip_path.basename()))
        upload(report_local, attempt_dir.join("report.json"))
        provenance_name: str | None = None
        if provenance_json is not None:
            upload(provenance_local, attempt_dir.join("provenance.json"))
            provenance_name = f"{attempt}/provenance.json"
        manifest = Manifest(
            bundle_id=bundle_id,
            output_run=output_run,
            attempt=attempt,
            zip=zip_name,
            zip_size=zip_size,
            zip_sha256=zip_sha256,
            n_datasets=len(refs),
            report=f"{attempt}/report.json",
            provenance=provenance_name,
            committed_at=now().isoformat(),
        )
        content = manifest.model_dump_json(indent=2).encode()
        manifest_uri = bundle_dir.join(MANIFEST_NAME)
        with_retries(
            retry, f"commit of {manifest_uri}", lambda: stager.commit(content, manifest_uri), counter
        )
    except (TransferError, PluginNotFound) as err:
        raise StageOutError(f"stage-out of bundle {bundle_id} to {bundle_dir} failed: {err}") from None
    finally:
        stats.retries = counter.count
    stats.seconds = time.perf_counter() - start
    _LOG.info("Committed %d datasets of bundle %s to %s.", len(refs), bundle_id, bundle_dir)
    return StageOutRecord(
        manifest=str(bundle_dir.join(MANIFEST_NAME)), zip=zip_name, n_datasets=len(refs), transfer=stats
    )


def _upload(stager: Stager, source: ResourcePath, destination: ResourcePath, stats: TransferStats) -> int:
    size = source.size()
    copied = stager.upload(source, destination)
    if copied != size:
        raise TransferError(
            f"{destination} has {copied} bytes after upload, expected {size}", permanent=False
        )
    stats.files += 1
    stats.bytes += copied
    return copied


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def read_manifest(text: bytes) -> Manifest:
    """Parse a manifest document."""
    return Manifest.model_validate(json.loads(text))
