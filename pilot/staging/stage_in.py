"""Stage-in: fetch a bundle's overall inputs from the DBB datastore, through the pilot's cache."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo
from lsst.resources import ResourcePath

from stagers.base import TransferError
from stagers.registry import stager_for

from ..errors import PluginNotFound, StageInError
from ..report import TransferStats
from ..workspace import DBBDatastore
from .input_cache import InputCache, blake2b_of
from .retry import RetryCounter, RetryPolicy, with_retries

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


def stage_in(
    files: list[InputFile],
    dbb: DBBDatastore,
    local_root: Path,
    cache: InputCache,
    *,
    verify: bool,
    parallel: int = 8,
    retry: RetryPolicy | None = None,
) -> StagedInputs:
    """Fetch ``files`` from the DBB into the pilot's ``cache`` and link them into ``local_root``.

    A file already cached with the right size is not fetched again (a cache hit).
    With ``verify``, each fetched file is hashed (blake2b, for verification against
    the DBB's record where it has one, and for the provenance record) and its size
    checked; a file failing verification is fetched once more.  Without it nothing is
    hashed (the hash costs about 3 CPU-seconds per GB).  Up to ``parallel``
    transfers run at once; transient transfer errors are retried per ``retry``.

    Raises
    ------
    StageInError
        A file is missing, unreadable, or still wrong after a second fetch; the
        message names the dataset.
    """
    retry = retry or RetryPolicy()
    counter = RetryCounter()
    start = time.perf_counter()
    outcomes: list[_Fetched] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="stage-in") as pool:
        futures = [pool.submit(_stage_one, item, dbb, cache, verify, retry, counter) for item in files]
        try:
            for future in futures:
                outcomes.append(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    stats = TransferStats(
        files=sum(o.fetched for o in outcomes),
        bytes=sum(o.bytes for o in outcomes),
        cache_hits=sum(not o.fetched for o in outcomes),
        retries=counter.count + sum(o.refetched for o in outcomes),
    )
    checksums: dict[str, str] = {}
    for item, outcome in zip(files, outcomes, strict=True):
        cache.link_into(item.relative_path, local_root / item.relative_path)
        if outcome.checksum is not None:
            checksums[item.relative_path] = outcome.checksum
    stats.seconds = time.perf_counter() - start
    return StagedInputs(stats, checksums)


@dataclasses.dataclass(frozen=True)
class StagedInputs:
    """What stage-in did, and the blake2b checksum of every input file it knows one for."""

    stats: TransferStats
    checksums: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Fetched:
    fetched: bool
    bytes: int
    refetched: int
    checksum: str | None


def _stage_one(
    item: InputFile,
    dbb: DBBDatastore,
    cache: InputCache,
    verify: bool,
    retry: RetryPolicy,
    counter: RetryCounter,
) -> _Fetched:
    if cache.lookup(item.relative_path, item.size) is not None:
        return _Fetched(False, 0, 0, cache.checksum_of(item.relative_path) or item.checksum)
    source = dbb.root.join(item.relative_path)
    destination = ResourcePath(cache.path_of(item.relative_path))
    try:
        stager = stager_for(source)
    except PluginNotFound as err:
        raise StageInError(str(err)) from None
    copied = 0
    problem: str | None = None
    for attempt in (1, 2):
        try:
            copied += with_retries(
                retry, f"fetch of {source}", lambda: stager.fetch(source, destination), counter
            )
        except TransferError as err:
            raise StageInError(f"cannot fetch input {_describe(item.ref)} from {source}: {err}") from None
        if not verify:  # no hashing at all: provenance keeps the DBB's checksum, if any
            return _Fetched(True, copied, attempt - 1, item.checksum)
        digest = blake2b_of(Path(destination.ospath))
        problem = _verification_problem(destination, digest, item)
        if problem is None:
            cache.record_checksum(item.relative_path, digest)
            return _Fetched(True, copied, attempt - 1, digest)
        _LOG.warning("Input %s %s (attempt %d).", _describe(item.ref), problem, attempt)
        destination.remove()
    raise StageInError(f"input {_describe(item.ref)} from {source} {problem} after refetching")


def _verification_problem(path: ResourcePath, digest: str, item: InputFile) -> str | None:
    actual_size = path.size()
    if item.size >= 0 and actual_size != item.size:
        return f"has {actual_size} bytes, the DBB recorded {item.size}"
    if item.checksum and digest != item.checksum:
        return "fails its blake2b checksum"
    return None


def _describe(ref: DatasetRef) -> str:
    return f"{ref.datasetType.name}@{ref.dataId.required} ({ref.id})"
