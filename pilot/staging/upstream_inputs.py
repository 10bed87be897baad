"""Inputs produced by other bundles of the same graph, read from their committed stage-out.

When ``pilot bundle`` has to cut a chain, the later bundle consumes datasets that an
earlier bundle produces.  The quantum graph has no datastore records for them, and a
job must not ask the registry, so they are taken from the upstream bundle's committed
zip in the DBB staging area (present whether or not it was ingested yet) and placed
where the workspace datastore expects them.
"""

from __future__ import annotations

import logging
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping

from lsst.daf.butler import DatasetRef, Quantum, QuantumBackedButler
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from stagers.base import TransferError
from stagers.registry import stager_for

from ..errors import PluginNotFound, StageInError
from ..report import TransferStats
from ..workspace import Workspace, workspace_butler
from . import area
from .stage_in import InputFile

_LOG = logging.getLogger(__name__)


def upstream_refs(
    quanta: Mapping[uuid.UUID, Quantum], output_run: str, recorded: list[InputFile]
) -> dict[uuid.UUID, DatasetRef]:
    """Return inputs that other quanta of the graph produce (in the output run, not in this bundle)."""
    produced = {ref.id for q in quanta.values() for refs in q.outputs.values() for ref in refs}
    have_records = {item.ref.id for item in recorded}
    return {
        ref.id: ref
        for q in quanta.values()
        for refs in q.inputs.values()
        for ref in refs
        if ref.run == output_run and ref.id not in produced and ref.id not in have_records
    }


def fetch_upstream(
    needed: dict[uuid.UUID, DatasetRef],
    depends_on: list[str],
    staging_root: ResourcePath,
    workspace: Workspace,
    qg: PredictedQuantumGraph,
    stats: TransferStats,
) -> set[uuid.UUID]:
    """Extract ``needed`` datasets from the upstream bundles' committed zips into the workspace.

    Returns the IDs of needed datasets that no upstream bundle staged (their
    producing quanta failed): their consumers cannot run.

    Raises
    ------
    StageInError
        An upstream bundle has not committed its stage-out.
    """
    if not needed:
        return set()
    start = time.perf_counter()
    remaining = dict(needed)
    qbb = workspace_butler(qg, str(workspace.repo), inputs=needed)
    try:
        for upstream in depends_on:
            if not remaining:
                break
            _extract_from(upstream, remaining, staging_root, workspace, qbb, stats)
    finally:
        qbb.close()
    for ref in remaining.values():
        _LOG.warning(
            "Upstream input %s@%s was not staged by any upstream bundle.", ref.datasetType.name, ref.dataId
        )
    stats.seconds += time.perf_counter() - start
    return set(remaining)


def _extract_from(
    upstream: str,
    remaining: dict[uuid.UUID, DatasetRef],
    staging_root: ResourcePath,
    workspace: Workspace,
    qbb: QuantumBackedButler,
    stats: TransferStats,
) -> None:
    bundle_dir = area.bundle_dir(staging_root, upstream)
    try:
        stager = stager_for(bundle_dir)
        manifest = area.committed_manifest(bundle_dir)
    except (TransferError, PluginNotFound) as err:
        raise StageInError(f"cannot read bundle {upstream}'s stage-out in {bundle_dir}: {err}") from None
    if manifest is None:
        raise StageInError(
            f"this bundle consumes outputs of bundle {upstream}, which has not committed its stage-out "
            f"to {bundle_dir}"
        )
    if manifest.files is not None:
        _link_from_files(upstream, area.files_dir(bundle_dir, manifest), remaining, qbb, stats)
        return
    if manifest.zip is None:
        return
    local_zip = ResourcePath(workspace.root / "upstream" / f"{upstream}-{manifest.attempt}.zip")
    if not local_zip.exists():
        try:
            stats.bytes += stager.fetch(bundle_dir.join(manifest.zip), local_zip)
            stats.files += 1
        except TransferError as err:
            raise StageInError(f"cannot fetch upstream bundle {upstream}'s outputs: {err}") from None
    index = ZipIndex.from_zip_file(local_zip)
    with zipfile.ZipFile(local_zip.ospath) as archive:
        for path_in_zip, target in _needed(index, remaining, qbb):
            target.write(archive.read(path_in_zip), overwrite=True)


def _link_from_files(
    upstream: str,
    files: ResourcePath,
    remaining: dict[uuid.UUID, DatasetRef],
    qbb: QuantumBackedButler,
    stats: TransferStats,
) -> None:
    """Fetch the needed files of a files-layout stage-out into their predicted workspace locations."""
    try:
        stager = stager_for(files)
        index = ZipIndex.model_validate_json(stager.read(files.join(ZipIndex.index_name)))
        for name, target in _needed(index, remaining, qbb):
            stats.bytes += stager.fetch(files.join(name), target)
            stats.files += 1
    except TransferError as err:
        raise StageInError(f"cannot fetch upstream bundle {upstream}'s outputs: {err}") from None


def _needed(
    index: ZipIndex, remaining: dict[uuid.UUID, DatasetRef], qbb: QuantumBackedButler
) -> Iterator[tuple[str, ResourcePath]]:
    """``(artifact name, workspace target)`` of each staged file holding a dataset still needed."""
    for name, info in index.artifact_map.items():
        for dataset_id in info.ids:
            ref = remaining.pop(dataset_id, None)
            if ref is not None:
                # The local datastore reads in trust mode from its predicted location.
                yield name, qbb._datastore.getURI(ref, predict=True).replace(fragment="")
