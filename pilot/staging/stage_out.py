"""Stage-out: a bundle's outputs go to the DBB staging area as one committed unit.

The outputs are zipped (``QuantumBackedButler.retrieve_artifacts_zip``, the format
``Butler.ingest_zip`` takes) and uploaded with the report and provenance into a new
attempt directory; then the manifest commits it (layout and commit rules:
`pilot.staging.area`).  Nothing is visible to ingest before the commit, and a pilot
killed mid-upload leaves only an uncommitted attempt behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from stagers.base import Stager, TransferError
from stagers.registry import stager_for

from ..errors import PluginNotFound, StageOutError
from ..report import QuantumResult, StageOutRecord, TransferStats, now
from ..workspace import workspace_butler
from . import area
from .retry import RetryCounter, RetryPolicy, with_retries

_LOG = logging.getLogger(__name__)


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
    start = time.perf_counter()
    zip_path = _assemble_zip(qg, refs, local_repo, work_dir, records)
    directory = area.bundle_dir(staging_root, bundle_id)
    upload = _Uploader(directory, retry or RetryPolicy())
    try:
        attempt = area.new_attempt()
        zip_name = upload.file(zip_path, f"{attempt}/{zip_path.basename()}") if zip_path else None
        upload.bytes_(report_json, work_dir / "report.json", f"{attempt}/report.json")
        provenance_name = None
        if provenance_json is not None:
            provenance_name = f"{attempt}/provenance.json"
            upload.bytes_(provenance_json, work_dir / "provenance.json", provenance_name)
        manifest = area.Manifest(
            bundle_id=bundle_id,
            output_run=output_run,
            attempt=attempt,
            zip=zip_name,
            zip_size=zip_path.size() if zip_path else 0,
            zip_sha256=_sha256(Path(zip_path.ospath)) if zip_path else None,
            n_datasets=len(refs),
            report=f"{attempt}/report.json",
            provenance=provenance_name,
            committed_at=now().isoformat(),
        )
        upload.commit(manifest)
    except (TransferError, PluginNotFound) as err:
        raise StageOutError(f"stage-out of bundle {bundle_id} to {directory} failed: {err}") from None
    finally:
        upload.stats.retries = upload.counter.count
    upload.stats.seconds = time.perf_counter() - start
    _LOG.info("Committed %d datasets of bundle %s to %s.", len(refs), bundle_id, directory)
    return StageOutRecord(
        manifest=str(directory.join(area.MANIFEST_NAME)),
        zip=zip_name,
        n_datasets=len(refs),
        transfer=upload.stats,
    )


def _assemble_zip(
    qg: PredictedQuantumGraph,
    refs: list[DatasetRef],
    local_repo: str,
    work_dir: Path,
    records: Mapping[str, DatastoreRecordData] | None,
) -> ResourcePath | None:
    """The outputs' zip in ``work_dir``, or `None` when there is nothing to stage."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if not refs:
        return None
    qbb = workspace_butler(qg, local_repo, outputs=(ref.id for ref in refs), records=records)
    try:
        return qbb.retrieve_artifacts_zip(refs, ResourcePath(work_dir, forceDirectory=True))
    except Exception as err:
        raise StageOutError(f"cannot assemble the output zip in {work_dir}: {err}") from None
    finally:
        qbb.close()


class _Uploader:
    """Uploads into one bundle's staging directory with retries, counting what it moved."""

    def __init__(self, directory: ResourcePath, retry: RetryPolicy) -> None:
        self.directory = directory
        self.retry = retry
        self.counter = RetryCounter()
        self.stats = TransferStats()
        self._stager: Stager | None = None

    @property
    def stager(self) -> Stager:
        if self._stager is None:
            self._stager = stager_for(self.directory)
        return self._stager

    def file(self, source: ResourcePath, name: str) -> str:
        """Upload ``source`` as ``<bundle dir>/<name>``; return ``name``."""
        destination = self.directory.join(name)
        with_retries(
            self.retry, f"upload of {destination}", lambda: self._upload(source, destination), self.counter
        )
        return name

    def bytes_(self, content: bytes, local: Path, name: str) -> str:
        """Write ``content`` to ``local`` in the workspace, then upload it as ``name``."""
        source = ResourcePath(local)
        source.write(content, overwrite=True)
        return self.file(source, name)

    def commit(self, manifest: area.Manifest) -> None:
        """Write the manifest: the attempt becomes the bundle's committed stage-out."""
        uri = self.directory.join(area.MANIFEST_NAME)
        with_retries(
            self.retry, f"commit of {uri}", lambda: area.commit(self.directory, manifest), self.counter
        )

    def _upload(self, source: ResourcePath, destination: ResourcePath) -> int:
        size = source.size()
        copied = self.stager.upload(source, destination)
        if copied != size:
            raise TransferError(
                f"{destination} has {copied} bytes after upload, expected {size}", permanent=False
            )
        self.stats.files += 1
        self.stats.bytes += copied
        return copied


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
