"""The DBB staging area: where jobs commit bundles and ingest finds them, and the manifest that commits.

Layout under the staging root (default ``<repo>/pilot-staging/``)::

    <bundle_id>/<attempt>/<dataset-ids-hash>.zip   outputs, in the zip format ``Butler.ingest_zip`` takes, or
    <bundle_id>/<attempt>/files/                   the same files and ``_butler_zip_index.json``, unzipped
    <bundle_id>/<attempt>/report.json              the bundle report
    <bundle_id>/<attempt>/provenance.json          host, site, software, per-quantum files and checksums
    <bundle_id>/manifest.json                      written last and atomically: the commit
    <bundle_id>/ingested.json                      the manifest that ingest last registered

Nothing is committed until ``manifest.json`` exists, and it only ever names a
complete attempt.  Staging again (a rerun, or a retry after a crash) writes a new
attempt and replaces the manifest; dataset IDs come from the quantum graph, so
ingest registers each dataset once whichever attempt it reads.  This module is the
only one that knows these names; the job (`stage_out`, `upstream_inputs`) and the
central side (`pilot.central.ingest`, `pilot.scheduler`) go through it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pydantic
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.resources import ResourcePath

from stagers.registry import stager_for

DEFAULT_DIR = "pilot-staging/"
MANIFEST_NAME = "manifest.json"
INGESTED_NAME = "ingested.json"


class Manifest(pydantic.BaseModel):
    """The commit record of one staged bundle."""

    manifest_version: int = 1
    bundle_id: str
    output_run: str
    attempt: str
    zip: str | None = pydantic.Field(description="Zip path relative to the bundle's staging directory.")
    files: str | None = pydantic.Field(
        default=None,
        description="Directory (relative to the bundle's) of the outputs and their _butler_zip_index.json; "
        "the 'files' layout, in place of a zip.",
    )
    zip_size: int = 0
    zip_sha256: str | None = None
    n_datasets: int = 0
    report: str
    provenance: str | None = None
    committed_at: str


def staging_root(repo: str, staging: str | None = None) -> ResourcePath:
    """The staging area: ``staging`` if given, else ``<repo>/pilot-staging/``."""
    if staging:
        return ResourcePath(staging, forceDirectory=True)
    return ResourcePath(repo, forceDirectory=True).join(DEFAULT_DIR, forceDirectory=True)


def bundle_dir(root: ResourcePath, bundle_id: str) -> ResourcePath:
    """``<staging>/<bundle_id>/``."""
    return root.join(f"{bundle_id}/", forceDirectory=True)


def new_attempt() -> str:
    """A fresh attempt name: UTC time (sorts by age) and a random suffix (unique across pilots)."""
    return f"attempt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def commit(directory: ResourcePath, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (the stager's commit: rename, WebDAV MOVE, one S3 PUT).

    Raises
    ------
    stagers.base.TransferError
        The write failed; an earlier manifest, if any, is unchanged.
    """
    content = manifest.model_dump_json(indent=2).encode()
    stager_for(directory).commit(content, directory.join(MANIFEST_NAME))


def committed_manifest(directory: ResourcePath) -> Manifest | None:
    """The bundle's manifest, or `None` if it never committed.

    Raises
    ------
    stagers.base.TransferError
        The staging area could not be read.
    """
    return _read(directory, MANIFEST_NAME)


def ingested_manifest(directory: ResourcePath) -> Manifest | None:
    """The manifest ingest last registered for this bundle, or `None`."""
    return _read(directory, INGESTED_NAME)


def mark_ingested(directory: ResourcePath, manifest: Manifest) -> None:
    """Record that ``manifest``'s attempt is registered in the DBB."""
    stager_for(directory).commit(manifest.model_dump_json(indent=2).encode(), directory.join(INGESTED_NAME))


def committed_bundles(root: ResourcePath) -> list[tuple[ResourcePath, Manifest]]:
    """``(bundle directory, manifest)`` of every committed bundle under ``root``, by bundle ID."""
    stager = stager_for(root)
    found = []
    try:
        # Object stores have no directories: list rather than ask whether the root exists.
        listing = list(root.walk())
    except FileNotFoundError:
        return []
    for directory, _, files in listing:
        if MANIFEST_NAME in files:
            path = ResourcePath(directory, forceDirectory=True)
            manifest = Manifest.model_validate_json(stager.read(path.join(MANIFEST_NAME)))
            found.append((path, manifest))
    return sorted(found, key=lambda item: item[1].bundle_id)


def read_index(directory: ResourcePath, manifest: Manifest) -> ZipIndex | None:
    """The ``ZipIndex`` of a committed attempt's outputs (zip or files layout); `None` if it has none."""
    if manifest.zip is not None:
        return ZipIndex.from_zip_file(directory.join(manifest.zip))
    if manifest.files is not None:
        return ZipIndex.model_validate_json(
            stager_for(directory).read(files_dir(directory, manifest).join(ZipIndex.index_name))
        )
    return None


def files_dir(directory: ResourcePath, manifest: Manifest) -> ResourcePath:
    """The directory of a files-layout attempt's outputs."""
    assert manifest.files is not None
    return directory.join(f"{manifest.files}/", forceDirectory=True)


def _read(directory: ResourcePath, name: str) -> Manifest | None:
    stager = stager_for(directory)
    uri = directory.join(name)
    if not stager.exists(uri):
        return None
    return Manifest.model_validate_json(stager.read(uri))
