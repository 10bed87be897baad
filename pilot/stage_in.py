"""Stage-in: fetch a bundle's overall inputs from the DBB datastore into the workspace."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo
from lsst.resources import ResourcePath

from stagers.base import TransferError
from stagers.registry import stager_for

from .errors import StageInError
from .report import TransferStats
from .workspace import DBBDatastore

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One file to fetch: where it is in the DBB datastore and what it must look like."""

    relative_path: str
    size: int
    checksum: str | None
    ref: DatasetRef


def input_files(quanta: Mapping[uuid.UUID, Quantum], datastore_name: str) -> list[InputFile]:
    """List the files behind the quanta's inputs, from the graph's datastore records.

    Inputs produced inside the bundle have no records and are not listed; neither
    are files the DBB records by absolute URI (read in place).
    """
    refs: dict[uuid.UUID, DatasetRef] = {}
    for quantum in quanta.values():
        for ref in quantum.initInputs.values():
            refs[ref.id] = ref
        for input_refs in quantum.inputs.values():
            for ref in input_refs:
                refs[ref.id] = ref
    files: dict[str, InputFile] = {}
    for quantum in quanta.values():
        record_data = quantum.datastore_records.get(datastore_name)
        if record_data is None:
            continue
        for dataset_id, tables in record_data.records.items():
            for records in tables.values():
                for record in records:
                    if not isinstance(record, StoredFileInfo):
                        continue
                    path = record.path.split("#", 1)[0]
                    if "://" in path or path.startswith("/") or dataset_id not in refs:
                        continue
                    files[path] = InputFile(path, record.file_size, record.checksum, refs[dataset_id])
    return sorted(files.values(), key=lambda f: f.relative_path)


def stage_in(files: list[InputFile], dbb: DBBDatastore, local_root: Path, *, verify: bool) -> TransferStats:
    """Fetch ``files`` from the DBB into ``local_root``, verifying size and checksum.

    A file already present with the right size is kept (a resumed bundle fetches
    nothing twice).  A file that fails verification is fetched once more.

    Raises
    ------
    StageInError
        A file is missing, unreadable, or still wrong after a second fetch; the
        message names the dataset.
    """
    stats = TransferStats()
    start = time.perf_counter()
    for item in files:
        destination = ResourcePath(local_root / item.relative_path)
        if destination.exists() and (item.size < 0 or destination.size() == item.size):
            stats.cache_hits += 1
            continue
        source = dbb.root.join(item.relative_path)
        try:
            stager = stager_for(source)
        except LookupError as err:
            raise StageInError(str(err)) from None
        for attempt in (1, 2):
            try:
                stats.bytes += stager.fetch(source, destination)
                stats.files += 1
            except TransferError as err:
                raise StageInError(f"cannot fetch input {_describe(item.ref)} from {source}: {err}") from None
            problem = _verification_problem(destination, item) if verify else None
            if problem is None:
                break
            stats.retries += 1
            _LOG.warning("Input %s %s (attempt %d).", _describe(item.ref), problem, attempt)
            destination.remove()
        else:
            raise StageInError(f"input {_describe(item.ref)} from {source} {problem} after refetching")
    stats.seconds = time.perf_counter() - start
    return stats


def _verification_problem(path: ResourcePath, item: InputFile) -> str | None:
    actual_size = path.size()
    if item.size >= 0 and actual_size != item.size:
        return f"has {actual_size} bytes, the DBB recorded {item.size}"
    if item.checksum:
        digest = hashlib.blake2b()
        with open(path.ospath, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != item.checksum:
            return "fails its blake2b checksum"
    return None


def _describe(ref: DatasetRef) -> str:
    return f"{ref.datasetType.name}@{ref.dataId.required} ({ref.id})"
