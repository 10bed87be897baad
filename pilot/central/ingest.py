"""``pilot ingest``: register committed bundles' outputs in the DBB (central side)."""

from __future__ import annotations

import dataclasses
import logging
import os

from lsst.daf.butler import Butler, DatasetRef, FileDataset
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.resources import ResourcePath

from stagers.base import TransferError

from ..errors import DBBError
from ..staging import area
from ..staging.area import Manifest
from .dbb_init import open_dbb
from .mock_storage import register_mock_storage_classes

_LOG = logging.getLogger(__name__)

_LOG_STORAGE_CLASS = "ButlerLogRecords"


@dataclasses.dataclass
class BundleIngest:
    """What ingest did with one committed bundle."""

    bundle_id: str
    attempt: str
    new: int
    already_present: int
    skipped: bool
    output_run: str = ""

    def describe(self) -> str:
        if self.skipped:
            return f"{self.bundle_id}: already ingested ({self.attempt}), nothing to do"
        return f"{self.bundle_id}: ingested {self.new} datasets ({self.already_present} already present)"


def ingest_committed(repo: str, staging: str | None = None) -> list[BundleIngest]:
    """Ingest every committed, not yet ingested bundle in the staging area.

    Idempotent: a bundle whose current attempt was ingested is skipped, and
    datasets already registered (from an earlier attempt) are left as they are,
    but for the logs of quanta the scheduler retried: the retry's log replaces them.
    """
    bundles = area.committed_bundles(area.staging_root(repo, staging))
    if not bundles:
        return []
    butler = open_dbb(repo, writeable=True)
    try:
        return [_ingest_one(butler, bundle_dir, manifest) for bundle_dir, manifest in bundles]
    finally:
        butler.close()


def ingest_bundle_dir(butler: Butler, bundle_dir: ResourcePath) -> BundleIngest | None:
    """Ingest one bundle's committed stage-out (as ``ingest_committed`` does); None if not committed."""
    manifest = area.committed_manifest(bundle_dir)
    return None if manifest is None else _ingest_one(butler, bundle_dir, manifest)


def _ingest_one(butler: Butler, bundle_dir: ResourcePath, manifest: Manifest) -> BundleIngest:
    done = area.ingested_manifest(bundle_dir)
    if done is not None and done.attempt == manifest.attempt:
        return BundleIngest(
            manifest.bundle_id, manifest.attempt, 0, 0, skipped=True, output_run=manifest.output_run
        )
    new = present = 0
    try:
        index = area.read_index(bundle_dir, manifest)
        if index is not None:
            new, present = _ingest_index(butler, bundle_dir, manifest, index)
    except Exception as err:
        raise DBBError(
            f"cannot ingest bundle {manifest.bundle_id} from {bundle_dir}: {type(err).__name__}: {err}"
        ) from None
    try:
        area.mark_ingested(bundle_dir, manifest)
    except TransferError as err:
        raise DBBError(f"ingested bundle {manifest.bundle_id} but cannot mark it: {err}") from None
    _LOG.info("Bundle %s: %d new datasets, %d already present.", manifest.bundle_id, new, present)
    return BundleIngest(
        manifest.bundle_id, manifest.attempt, new, present, skipped=False, output_run=manifest.output_run
    )


def _ingest_index(
    butler: Butler, bundle_dir: ResourcePath, manifest: Manifest, index: ZipIndex
) -> tuple[int, int]:
    """Register an attempt's outputs; return ``(new, already present)``."""
    register_mock_storage_classes(
        dt.storageClass for dt in index.refs.dataset_types.values() if dt.storageClass
    )
    refs = index.refs.to_refs(universe=butler.dimensions)
    known = [ref for ref in refs if butler.get_dataset(ref.id) is not None]
    if known and all(ref.datasetType.storageClass_name == _LOG_STORAGE_CLASS for ref in known):
        _drop_earlier_logs(butler, known)
        known = []
    new = len(refs) - len(known)
    if not new:
        return 0, len(known)
    if manifest.zip is not None:
        butler.ingest_zip(bundle_dir.join(manifest.zip), transfer="copy", skip_existing=True)
        return new, len(known)
    files = area.files_dir(bundle_dir, manifest)
    by_id = {ref.id: ref for ref in refs}
    datasets = [
        FileDataset(path=files.join(name), refs=[by_id[i] for i in info.ids], formatter=info.info.formatter)
        for name, info in index.artifact_map.items()
    ]
    butler.ingest(*datasets, transfer=_transfer_into(butler, files), skip_existing=True)
    return new, len(known)


def _transfer_into(butler: Butler, files: ResourcePath) -> str:
    """Hard links where staged files and DBB datastore share a filesystem (no byte copied), else copies."""
    if files.isLocal:
        for root in butler.get_datastore_roots().values():
            if root is not None and root.isLocal and _same_device(files.ospath, root.ospath):
                return "hardlink"
    return "copy"


def _same_device(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _drop_earlier_logs(butler: Butler, logs: list[DatasetRef]) -> None:
    """Remove from the DBB the logs an earlier attempt of retried quanta left there.

    A failed quantum's log is staged and ingested with its bundle; when the scheduler
    retries the quantum, the retry's zip holds the newer log under the same dataset ID
    (and `Butler.ingest_zip` refuses a zip that partly overlaps the repository).
    """
    _LOG.info("Replacing %d logs of earlier attempts of retried quanta.", len(logs))
    butler.pruneDatasets(logs, disassociate=True, unstore=True, purge=True)
