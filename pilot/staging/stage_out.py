"""Stage-out: a bundle's outputs go to the DBB staging area as one committed unit, each byte once.

`StageOut` opens a new attempt before the first quantum runs and places each
quantum's files as the quantum finishes (`add`, on a background thread, so it
overlaps the chains still computing); `finish` adds what an earlier run of the
bundle left in the workspace, the index, the report and provenance, and commits
(layout and commit rules: `pilot.staging.area`).  Files are placed with the
stack's own ``Datastore.retrieveArtifacts``; the index is the ``ZipIndex`` that
``Butler.ingest_zip`` reads, so both layouts carry the same description:

- **files** — a staging area the job sees as a local directory (the ``file``
  stager): each output is hard-linked into ``<attempt>/files/`` (copied once when
  the workspace is on another filesystem), next to ``_butler_zip_index.json``.
  Nothing is written twice and nothing is read again.
- **zip** — a remote staging area (WebDAV, S3): the files are hard-linked into the
  workspace's ``stage-out/`` (free), then streamed once into an uncompressed zip,
  with its sha256 computed as it is written, and the zip is uploaded once.

Nothing is visible to ingest before the manifest commit, and a pilot killed
mid-way leaves only an uncommitted attempt behind.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from lsst.daf.butler import DatasetRef, Quantum, QuantumBackedButler
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import (
    ArtifactIndexInfo,
    SerializedDatasetRefContainerV1,
    ZipIndex,
)
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

FILES_DIR = "files"


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
    wanted = {ref.id: ref for ref in _wanted_refs(qg, quanta, results)}
    if not wanted:
        return []
    qbb = workspace_butler(qg, local_repo, outputs=wanted.keys(), records=records)
    try:
        stored = qbb.stored_many(wanted.values())
    finally:
        qbb.close()
    return [ref for ref, present in stored.items() if present]


class StageOut:
    """One bundle's stage-out: a new attempt, filled as quanta finish, committed by `finish`.

    Parameters
    ----------
    qg : `PredictedQuantumGraph`
        The bundle's graph.
    quanta : `~collections.abc.Mapping` [`uuid.UUID`, `Quantum`]
        The bundle's quanta (for their output refs).
    bundle_id, output_run : `str`
        The bundle and its RUN collection.
    local_repo : `str`
        The workspace datastore's configuration.
    work_dir : `pathlib.Path`
        The workspace's stage-out directory (report and provenance copies; the zip's files).
    staging_root : `lsst.resources.ResourcePath`
        The staging area.
    retry : `RetryPolicy`
        How transfers are retried.
    """

    def __init__(
        self,
        *,
        qg: PredictedQuantumGraph,
        quanta: Mapping[uuid.UUID, Quantum],
        bundle_id: str,
        output_run: str,
        local_repo: str,
        work_dir: Path,
        staging_root: ResourcePath,
        retry: RetryPolicy,
    ) -> None:
        self.qg, self.quanta, self.bundle_id, self.output_run = qg, quanta, bundle_id, output_run
        self.local_repo = local_repo
        self.work_dir = work_dir
        self.attempt = area.new_attempt()
        self.directory = area.bundle_dir(staging_root, bundle_id)
        self.upload = _Uploader(self.directory, retry)
        self.started = time.perf_counter()
        try:
            local = self.upload.stager.local_path(self.directory.join(f"{self.attempt}/"))
        except PluginNotFound as err:
            raise StageOutError(
                f"stage-out of bundle {bundle_id} to {self.directory} failed: {err}"
            ) from None
        self.files = (local if local is not None else work_dir / self.attempt) / FILES_DIR
        self._transfer: str | None = None
        self._zip = _StreamingZip(work_dir / self.attempt) if local is None else None
        self._qbb: QuantumBackedButler | None = None
        self._artifacts: dict[ResourcePath, ArtifactIndexInfo] = {}
        self._refs: dict[uuid.UUID, DatasetRef] = {}
        self._placing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pilot-stage-out")
        self._pending: list[concurrent.futures.Future[None]] = []
        self._closed = False
        self._lock = threading.Lock()
        self._queue: list[tuple[list[DatasetRef], dict[str, DatastoreRecordData]]] = []
        self._scheduled = False

    # -- as quanta finish ---------------------------------------------------------------------

    def add(self, result: QuantumResult, records: Mapping[str, DatastoreRecordData]) -> None:
        """Queue the staged files of a finished quantum for placing (errors surface in `complete`).

        Quanta that finish while the placing thread is busy are placed together, in one
        call: per-call costs (a transfer thread pool, a records import) are paid per
        batch, not per quantum.
        """
        written = {dataset_id for data in records.values() for dataset_id in data.records}
        refs = [ref for ref in _wanted_refs(self.qg, self.quanta, [result]) if ref.id in written]
        if not refs:
            return
        with self._lock:
            self._queue.append((refs, dict(records)))
            if not self._scheduled:
                self._scheduled = True
                self._pending.append(self._placing.submit(self._drain))

    def _drain(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
            self._scheduled = False
        refs = [ref for refs, _ in batch for ref in refs]
        self._place(refs, DatastoreRecordData.merge_mappings(*(records for _, records in batch)))

    def _butler(self) -> QuantumBackedButler:
        # The workspace butler's registry is an in-memory sqlite database, which lives in
        # the connection of the thread that made it: it is made, used and closed only on
        # the placing thread.
        if self._qbb is None:
            self._qbb = workspace_butler(self.qg, self.local_repo, outputs=_all_outputs(self.quanta))
        return self._qbb

    def _close_butler(self) -> None:
        if self._qbb is not None:
            self._qbb.close()

    def _place_leftover(self, leftover: list[DatasetRef]) -> None:
        present = [ref for ref, ok in self._butler().stored_many(leftover).items() if ok]
        if present:
            self._place(present, None)

    def _place(self, refs: list[DatasetRef], records: Mapping[str, DatastoreRecordData] | None) -> None:
        if self._transfer is None:
            self.files.mkdir(parents=True, exist_ok=True)
            # Hard links where the workspace and the attempt share a filesystem: no byte is copied.
            same_device = (
                os.stat(self.files).st_dev
                == os.stat(Path(ResourcePath(self.local_repo).ospath).parent).st_dev
            )
            self._transfer = "hardlink" if same_device else "copy"
        datastore = self._butler()._datastore  # type: ignore[attr-defined]
        if records:
            datastore.import_records(records)
        # Datastore.retrieveArtifacts is what QuantumBackedButler.retrieve_artifacts_zip uses;
        # called directly it places files by link instead of copying them into a temporary
        # directory, and returns the index entries without writing an index per call.
        root = ResourcePath(self.files, forceDirectory=True)
        placed = datastore.retrieveArtifacts(
            refs,
            root,
            transfer=self._transfer,
            preserve_path=False,
            overwrite=True,
            write_index=False,
            add_prefix=True,
        )
        if self._zip is not None:  # remote staging: into the zip now, while chains compute
            for path, name in ZipIndex.calc_relative_paths(root, placed).items():
                self._zip.add(Path(path.ospath), name)
        self._artifacts.update(placed)
        self._refs.update((ref.id, ref) for ref in refs)

    # -- at the end ---------------------------------------------------------------------------

    def complete(self, results: list[QuantumResult]) -> set[uuid.UUID]:
        """Wait for the background placing, place what earlier runs left; return the staged IDs.

        Raises
        ------
        StageOutError
            A file could not be placed; the workspace still holds every output.
        """
        self.started = time.perf_counter()  # stage-out's own time: what is left after execution
        try:
            for future in self._pending:
                future.result()
            self._pending.clear()
            leftover = [
                ref for ref in _wanted_refs(self.qg, self.quanta, results) if ref.id not in self._refs
            ]
            if leftover:
                # Quanta an earlier run here finished (resumed): their files are in the
                # workspace, their records are not in this process; trust mode finds them.
                self._placing.submit(self._place_leftover, leftover).result()
        except Exception as err:
            raise StageOutError(
                f"cannot place the outputs of bundle {self.bundle_id}: {type(err).__name__}: {err}"
            ) from None
        return set(self._refs)

    def commit(self, report_json: bytes, provenance_json: bytes) -> StageOutRecord:
        """Write the index, upload what is left to upload, and commit the attempt with the manifest.

        Raises
        ------
        StageOutError
            Anything went wrong; the workspace still holds every output, and no
            manifest naming an incomplete attempt was written.
        """
        try:
            files_name, zip_name, zip_size, zip_sha256 = self._seal()
            self.upload.bytes_(report_json, self.work_dir / "report.json", f"{self.attempt}/report.json")
            provenance_name = f"{self.attempt}/provenance.json"
            self.upload.bytes_(provenance_json, self.work_dir / "provenance.json", provenance_name)
            self.upload.commit(
                area.Manifest(
                    bundle_id=self.bundle_id,
                    output_run=self.output_run,
                    attempt=self.attempt,
                    zip=zip_name,
                    zip_size=zip_size,
                    zip_sha256=zip_sha256,
                    files=files_name,
                    n_datasets=len(self._refs),
                    report=f"{self.attempt}/report.json",
                    provenance=provenance_name,
                    committed_at=now().isoformat(),
                )
            )
        except (TransferError, PluginNotFound, OSError) as err:
            raise StageOutError(
                f"stage-out of bundle {self.bundle_id} to {self.directory} failed: {err}"
            ) from None
        finally:
            self.upload.stats.retries = self.upload.counter.count
        self.upload.stats.seconds = time.perf_counter() - self.started
        _LOG.info(
            "Committed %d datasets of bundle %s to %s.", len(self._refs), self.bundle_id, self.directory
        )
        return StageOutRecord(
            manifest=str(self.directory.join(area.MANIFEST_NAME)),
            zip=zip_name,
            files=files_name,
            n_datasets=len(self._refs),
            transfer=self.upload.stats,
        )

    def staged_ids(self) -> set[uuid.UUID]:
        """IDs of the datasets placed so far."""
        return set(self._refs)

    def close(self) -> None:
        """Stop the background placing (waiting for what is under way) and release the butler."""
        if self._closed:
            return
        self._closed = True
        self._placing.submit(self._close_butler)
        self._placing.shutdown(wait=True)
        if self._zip is not None:
            self._zip.abandon()

    def _seal(self) -> tuple[str | None, str | None, int, str | None]:
        """Write the index; return ``(files dir, zip name, zip size, zip sha256)`` relative to the bundle."""
        if not self._refs:
            return None, None, 0, None
        index = ZipIndex(
            refs=SerializedDatasetRefContainerV1.from_refs(self._refs.values()),
            artifact_map={
                name: self._artifacts[path]
                for path, name in ZipIndex.calc_relative_paths(
                    ResourcePath(self.files, forceDirectory=True), self._artifacts
                ).items()
            },
        )
        if self._zip is None:  # the files layout: the index goes next to the files
            index.write_index(ResourcePath(self.files, forceDirectory=True))
            return f"{self.attempt}/{FILES_DIR}", None, 0, None
        zip_path, size, sha256 = self._zip.finish(index)
        self.upload.file(ResourcePath(zip_path), f"{self.attempt}/{zip_path.name}")
        return None, f"{self.attempt}/{zip_path.name}", size, sha256


def _all_outputs(quanta: Mapping[uuid.UUID, Quantum]) -> list[uuid.UUID]:
    return [ref.id for quantum in quanta.values() for refs in quantum.outputs.values() for ref in refs]


def _wanted_refs(
    qg: PredictedQuantumGraph, quanta: Mapping[uuid.UUID, Quantum], results: Iterable[QuantumResult]
) -> list[DatasetRef]:
    """Every output of succeeded quanta, and the logs of failed ones, typed as the DBB types them."""
    wanted: list[DatasetRef] = []
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
                wanted.append(ref.overrideStorageClass(registry_type.storageClass_name))
    return wanted


class _HashingWriter:
    """A write-only, unseekable file: `zipfile` then streams (data descriptors) and we hash as it goes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._position = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._stream.write(view)
        self.sha256.update(view)
        self._position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._stream.flush()


class _StreamingZip:
    """An uncompressed zip written member by member as files are placed; named and hashed when done.

    The zip's name (``ZipIndex.calculate_zip_file_name``) depends on the index, known
    only at the end, so it is written under a temporary name and renamed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.partial = directory / ".outputs.zip.partial"
        self._raw: IO[bytes] | None = None
        self._writer: _HashingWriter | None = None
        self._archive: zipfile.ZipFile | None = None

    def add(self, path: Path, name: str) -> None:
        self._open().write(path, name)

    def _open(self) -> zipfile.ZipFile:
        if self._archive is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._raw = open(self.partial, "wb")  # noqa: SIM115 - closed in finish/abandon
            self._writer = _HashingWriter(self._raw)
            self._archive = zipfile.ZipFile(self._writer, "w", zipfile.ZIP_STORED)  # type: ignore[call-overload]
        return self._archive

    def finish(self, index: ZipIndex) -> tuple[Path, int, str]:
        """Add the index, close, rename; return the zip, its size and sha256."""
        archive = self._open()
        archive.writestr(ZipIndex.index_name, index.model_dump_json(), zipfile.ZIP_DEFLATED)
        archive.close()
        assert self._writer is not None and self._raw is not None
        self._raw.close()
        self._archive = None
        final = self.directory / index.calculate_zip_file_name()
        os.replace(self.partial, final)
        return final, self._writer.tell(), self._writer.sha256.hexdigest()

    def abandon(self) -> None:
        """Close an unfinished zip (the attempt was not committed); leave nothing open."""
        if self._archive is not None:
            self._archive.close()
        if self._raw is not None:
            self._raw.close()
        self._archive = None


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
