"""A limited butler that hands intermediates from quantum to quantum in memory.

It wraps the worker's bundle-wide quantum-backed butler.  A ``put`` of a dataset that
later quanta of the bundle consume keeps the object in memory, so the consumer's
``get`` never reads it back from disk; the dataset is still persisted through the
wrapped butler, unless its type is transient, in which case it is never written.
Objects are evicted once their last expected consumer has read them (or when the
pilot says every consumer has run), and every consumer but the last gets a copy,
so a task that modifies its input cannot corrupt another's.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lsst.daf.butler import (
    ButlerMetrics,
    DatasetProvenance,
    DatasetRef,
    DeferredDatasetHandle,
    DimensionUniverse,
    FileDataset,
    Formatter,
    FormatterV2,
    LimitedButler,
    QuantumBackedButler,
    StorageClass,
)
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo
from lsst.pipe.base import InMemoryDatasetHandle
from lsst.resources import ResourcePath

from ..report import IoCounts
from ..staging.input_cache import blake2b_of

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NewOutputs:
    """What a butler wrote since it was last asked: datastore records and ``(size, blake2b)`` by ID."""

    records: dict[str, DatastoreRecordData]
    checksums: dict[uuid.UUID, tuple[int, str | None]]


def stored_size(records: Mapping[str, DatastoreRecordData]) -> int:
    """Bytes of the files ``records`` describe."""
    return sum(
        max(record.file_size, 0)
        for data in records.values()
        for tables in data.records.values()
        for rows in tables.values()
        for record in rows
        if isinstance(record, StoredFileInfo)
    )


def checksums_of(
    records: Mapping[str, DatastoreRecordData], root: ResourcePath, *, hash_outputs: bool
) -> dict[uuid.UUID, tuple[int, str | None]]:
    """``(size, blake2b)`` by dataset ID of the files ``records`` describe under the datastore ``root``.

    Each file is hashed right after it was written (its bytes are still in the page
    cache); without ``hash_outputs`` the recorded size only.
    """
    checksums: dict[uuid.UUID, tuple[int, str | None]] = {}
    for data in records.values():
        for dataset_id, tables in data.records.items():
            for rows in tables.values():
                for info in rows:
                    if not isinstance(info, StoredFileInfo):
                        continue
                    if hash_outputs:
                        path = Path(root.join(info.path).ospath)
                        checksums[dataset_id] = (path.stat().st_size, blake2b_of(path))
                    else:
                        checksums[dataset_id] = (info.file_size, None)
    return checksums


class ChainingButler(LimitedButler):
    """`LimitedButler` over a `QuantumBackedButler`, keeping intermediates in memory.

    Parameters
    ----------
    wrapped : `QuantumBackedButler`
        Persists outputs to, and reads inputs from, the workspace datastore.
    consumers : `~collections.abc.Mapping` [`uuid.UUID`, `int`]
        For each dataset produced and consumed inside the bundle, how many quanta
        consume it.  Only these are kept in memory.
    transient : `~collections.abc.Iterable` [`str`]
        Dataset types never written to disk.
    """

    def __init__(
        self,
        wrapped: QuantumBackedButler,
        consumers: Mapping[uuid.UUID, int],
        transient: Iterable[str] = (),
        *,
        hash_outputs: bool = True,
    ) -> None:
        self._hash_outputs = hash_outputs
        self._wrapped = wrapped
        self.storageClasses = wrapped.storageClasses
        self._consumers = dict(consumers)
        self._transient = frozenset(transient)
        self._intermediates = frozenset(consumers)
        self._memory: dict[uuid.UUID, tuple[Any, DatasetRef]] = {}
        self._persisted: list[DatasetRef] = []
        self._taken = 0
        self.io = IoCounts()

    # -- what the pilot asks ------------------------------------------------

    def held(self) -> list[uuid.UUID]:
        """IDs of the datasets held in memory now."""
        return list(self._memory)

    def persisted_records(self) -> dict[str, DatastoreRecordData]:
        """Datastore records of every dataset this butler wrote, for stage-out."""
        records, size = self._export(self._persisted)
        self.io.bytes_written = size
        return records

    def take_new_outputs(self) -> NewOutputs:
        """Records, sizes and checksums of the datasets written since the last call.

        Called after each quantum, so the pilot can stage a quantum's files while
        other chains compute.  Each file is hashed here, once, right after it was
        written (its bytes are still in the page cache), and the checksum serves the
        provenance record; nothing reads the file again for it.
        """
        new = self._persisted[self._taken :]
        self._taken = len(self._persisted)
        records, size = self._export(new)
        self.io.bytes_written += size
        root = self._wrapped._datastore.root  # type: ignore[attr-defined]
        return NewOutputs(records, checksums_of(records, root, hash_outputs=self._hash_outputs))

    def _export(self, refs: list[DatasetRef]) -> tuple[dict[str, DatastoreRecordData], int]:
        """Records of ``refs`` and the bytes of their files."""
        # QuantumBackedButler.extract_provenance_data exports the same records, but also
        # warns about inputs it never saw checked (intermediates served from memory).
        records = dict(self._wrapped._datastore.export_records(refs))
        return records, stored_size(records)

    # -- for activators that run a quantum outside this process (container) ---

    def export_records(self, refs: Iterable[DatasetRef]) -> dict[str, DatastoreRecordData]:
        """Datastore records of ``refs`` that are on disk in the workspace."""
        return dict(self._wrapped._datastore.export_records(list(refs)))

    def persist_held(self, refs: Iterable[DatasetRef]) -> list[DatasetRef]:
        """Write datasets held only in memory (transient types) to the workspace, so a process
        that reads files can read them; `unstore` them once it has (or they would be staged)."""
        written = []
        for ref in refs:
            held = self._memory.get(ref.id)
            if held is not None and not self._wrapped.stored(ref):
                self._wrapped.put(held[0], held[1])
                written.append(ref)
        return written

    def unstore(self, refs: list[DatasetRef]) -> None:
        """Delete the files of ``refs`` from the workspace, keeping what memory holds of them."""
        if refs:
            self._wrapped.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)

    def adopt_outputs(self, refs: Iterable[DatasetRef], records: Mapping[str, DatastoreRecordData]) -> None:
        """Take outputs that another process wrote to the workspace datastore as this butler's own
        (readable by later quanta, staged out by `take_new_outputs`)."""
        self._wrapped._datastore.import_records(records)
        for ref in refs:
            self._persisted.append(ref)
            self.io.files_written += 1

    def evict(self, dataset_ids: Iterable[uuid.UUID]) -> None:
        """Drop datasets whose consumers have all run (possibly elsewhere)."""
        for dataset_id in dataset_ids:
            self._memory.pop(dataset_id, None)

    # -- files for programs outside the butler (the exec activator) ----------

    def local_file(self, ref: DatasetRef) -> Path:
        """The local file of a stored dataset, for a program that reads it itself.

        Counts as a consumer's read (the in-memory copy, if any, is dropped after its last).

        Raises
        ------
        FileNotFoundError
            The dataset type is transient (never written), or the dataset has no local file.
        """
        if ref.datasetType.name in self._transient:
            raise FileNotFoundError(
                f"{ref.datasetType.name} is a transient dataset type: it is never written to a file"
            )
        uri = self._wrapped._datastore.getURI(ref)
        if not uri.isLocal:
            raise FileNotFoundError(f"{ref.datasetType.name} {ref.dataId} is not a local file: {uri}")
        if ref.id in self._consumers:
            self._consumers[ref.id] -= 1
            if self._consumers[ref.id] <= 0:
                self._memory.pop(ref.id, None)
        size = uri.size()
        self.io.bytes_read += size
        if ref.id in self._intermediates:
            self.io.intermediate_bytes_read += size
        return Path(uri.ospath)

    def formatter_class(self, ref: DatasetRef) -> type[Formatter | FormatterV2]:
        """The formatter the workspace datastore reads and writes ``ref`` with."""
        return self._wrapped._datastore.formatterFactory.getFormatterClass(ref)  # type: ignore[attr-defined]

    def ingest_file(
        self, path: Path, ref: DatasetRef, formatter: type[Formatter | FormatterV2] | None = None
    ) -> None:
        """Move the file at ``path`` into the workspace datastore as ``ref`` (read with ``formatter``).

        It is staged out like a ``put`` dataset; its consumers in the bundle read it from disk.
        """
        if ref.datasetType.name in self._transient:
            raise ValueError(f"{ref.datasetType.name} is a transient dataset type; a file cannot become one")
        self._wrapped._datastore.ingest(FileDataset(str(path), [ref], formatter=formatter), transfer="move")
        self._persisted.append(ref)
        self.io.files_written += 1

    def read_stored(self, ref: DatasetRef) -> Any:
        """Read ``ref`` from the workspace datastore (not counted as a consumer's read)."""
        return self._wrapped.get(ref)

    # -- LimitedButler --------------------------------------------------------

    @property
    def _metrics(self) -> ButlerMetrics:
        return self._wrapped._metrics

    @_metrics.setter
    def _metrics(self, metrics: ButlerMetrics) -> None:
        self._wrapped._metrics = metrics

    def close(self) -> None:
        self._memory.clear()
        self._wrapped.close()

    def isWriteable(self) -> bool:
        return True

    @property
    def dimensions(self) -> DimensionUniverse:
        return self._wrapped.dimensions

    def put(self, obj: Any, ref: DatasetRef, /, *, provenance: DatasetProvenance | None = None) -> DatasetRef:
        transient = ref.datasetType.name in self._transient
        if not transient:
            self._wrapped.put(obj, ref, provenance=provenance)
            self._persisted.append(ref)
            self.io.files_written += 1
        else:
            self.io.transient_datasets_not_written += 1
        if self._consumers.get(ref.id, 0) > 0:
            self._memory[ref.id] = (obj, ref)
        return ref

    def get(
        self,
        ref: DatasetRef,
        /,
        *,
        parameters: dict[str, Any] | None = None,
        storageClass: StorageClass | str | None = None,
    ) -> Any:
        held = self._memory.get(ref.id)
        if held is None:
            obj = self._wrapped.get(ref, parameters=parameters, storageClass=storageClass)
            size = self._wrapped._datastore.getURI(ref).size()
            self.io.bytes_read += size
            if ref.id in self._intermediates:
                self.io.intermediate_bytes_read += size
            return obj
        remaining = self._consumers.get(ref.id, 1) - 1
        self._consumers[ref.id] = remaining
        self.io.datasets_handed_in_memory += 1
        last = remaining <= 0 and not parameters
        if last:
            del self._memory[ref.id]  # the last consumer takes the object itself
        # Counted as a butler get, so task metadata's butler_metrics match pipetask's.
        with self._metrics.instrument_get(log=_LOG, msg="Handed over in memory"):
            return self._converted(held, ref, parameters, storageClass, copy=not last)

    @staticmethod
    def _converted(
        held: tuple[Any, DatasetRef],
        ref: DatasetRef,
        parameters: dict[str, Any] | None,
        storageClass: StorageClass | str | None,
        *,
        copy: bool,
    ) -> Any:
        """Return the held object as ``ref`` asks for it (storage class, parameters, copy)."""
        obj, put_ref = held
        handle = InMemoryDatasetHandle(
            obj, storageClass=put_ref.datasetType.storageClass, dataId=ref.dataId, copy=copy
        )
        return handle.get(parameters=parameters, storageClass=storageClass or ref.datasetType.storageClass)

    def getDeferred(
        self,
        ref: DatasetRef,
        /,
        *,
        parameters: dict[str, Any] | None = None,
        storageClass: str | StorageClass | None = None,
    ) -> DeferredDatasetHandle:
        held = self._memory.get(ref.id)
        if held is None:
            return self._wrapped.getDeferred(ref, parameters=parameters, storageClass=storageClass)
        self.io.datasets_handed_in_memory += 1
        wanted = storageClass or ref.datasetType.storageClass
        # InMemoryDatasetHandle is pipe_base's stand-in for a DeferredDatasetHandle.
        return InMemoryDatasetHandle(  # type: ignore[return-value]
            self._converted(held, ref, None, wanted, copy=False),
            storageClass=wanted,
            parameters=parameters,
            dataId=ref.dataId,
            copy=True,
        )

    def stored(self, ref: DatasetRef) -> bool:
        return ref.id in self._memory or self._wrapped.stored(ref)

    def stored_many(self, refs: Iterable[DatasetRef]) -> dict[DatasetRef, bool]:
        result: dict[DatasetRef, bool] = {}
        on_disk: list[DatasetRef] = []
        for ref in refs:
            if ref.id in self._memory:
                result[ref] = True
            else:
                on_disk.append(ref)
        if on_disk:
            result.update(self._wrapped.stored_many(on_disk))
        return result

    def markInputUnused(self, ref: DatasetRef) -> None:
        self._wrapped.markInputUnused(ref)

    def pruneDatasets(
        self,
        refs: Iterable[DatasetRef],
        *,
        disassociate: bool = True,
        unstore: bool = False,
        tags: Iterable[str] = (),
        purge: bool = False,
    ) -> None:
        refs = list(refs)
        self.evict(ref.id for ref in refs)
        self._wrapped.pruneDatasets(refs, disassociate=disassociate, unstore=unstore, tags=tags, purge=purge)
