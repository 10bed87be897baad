"""The job's scratch directory, the local datastore the quanta write into, and butlers over it."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from lsst.daf.butler import Config, QuantumBackedButler
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from .errors import BundleError, ConfigError, StageInError, shown
from .memory_records import MemoryBridgeManager, MemoryOpaqueTableStorageManager

BUTLER_ROOT_TOKEN = "<butlerRoot>"


@dataclasses.dataclass(frozen=True)
class DBBDatastore:
    """What a job knows of the DBB: its datastore's name, root and configuration."""

    name: str
    root: ResourcePath
    config: Config


def read_dbb_datastore(repo: str) -> DBBDatastore:
    """Read the DBB's datastore configuration from its ``butler.yaml`` (no registry access).

    Raises
    ------
    StageInError
        The DBB configuration cannot be read.
    BundleError
        The DBB's datastore is of a kind the pilot cannot stage from.
    """
    repo_uri = ResourcePath(repo, forceDirectory=not repo.endswith((".yaml", ".json")))
    config_uri = repo_uri if not repo_uri.isdir() else repo_uri.join("butler.yaml")
    try:
        config = Config(config_uri)
    except Exception as err:
        raise StageInError(
            f"cannot read DBB configuration {shown(config_uri)}: {type(err).__name__}: {err}"
        ) from None
    datastore = config.get("datastore")
    if datastore is None or "FileDatastore" not in str(datastore.get("cls", "")):
        raise BundleError(
            f"DBB {shown(config_uri)} does not use a FileDatastore; other datastores are not supported"
        )
    raw_root = str(datastore.get("root", BUTLER_ROOT_TOKEN))
    name = str(datastore.get("name", f"FileDatastore@{raw_root}"))
    root = ResourcePath(raw_root.replace(BUTLER_ROOT_TOKEN, str(config_uri.dirname())), forceDirectory=True)
    return DBBDatastore(name=name, root=root, config=Config(datastore.toDict()))


def pilot_area(explicit: Path | None) -> Path:
    """The pilot's work area: ``explicit``, else ``$_CONDOR_SCRATCH_DIR/pilot``, else a temporary one.

    It holds one workspace per bundle (``<area>/<bundle_id>/``) and the input cache
    the bundles share (``<area>/input-cache/``).

    Raises
    ------
    ConfigError
        The work area cannot be created.
    """
    if explicit is not None:
        area = explicit
    elif scratch := os.environ.get("_CONDOR_SCRATCH_DIR"):
        area = Path(scratch) / "pilot"
    else:
        area = Path(tempfile.mkdtemp(prefix="pilot-"))
    area = area.absolute()
    try:
        area.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the pilot work area {area}: {err}") from None
    return area


def input_cache_root(area: Path) -> Path:
    """Where the pilot-wide input cache lives in the work ``area``."""
    return area / "input-cache"


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Layout of a bundle's scratch directory.

    ``repo/`` is a standalone datastore root: inputs are staged into it at the same
    relative paths as in the DBB, and quanta write their outputs there, never
    straight into the DBB.
    """

    root: Path
    fresh: bool = True
    """No local datastore existed here before: nothing was ever executed in this workspace."""

    @classmethod
    def in_area(cls, area: Path, bundle_id: str) -> Workspace:
        """The workspace of ``bundle_id`` in the pilot's work ``area`` (created if missing)."""
        root = area / bundle_id
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create workspace {root}: {err}") from None
        return cls(root, fresh=not (root / "repo").exists())

    @property
    def repo(self) -> Path:
        """Local datastore root (holds ``butler.yaml``)."""
        return self.root / "repo"

    @property
    def stage_out_dir(self) -> Path:
        """Where the bundle's zip is assembled before upload."""
        return self.root / "stage-out"

    @property
    def report_path(self) -> Path:
        """The bundle's ``report.json``."""
        return self.root / "report.json"

    def write_local_repo_config(self, dbb: DBBDatastore) -> ResourcePath:
        """Write ``repo/butler.yaml``: the DBB's datastore, rooted here, under the DBB's datastore name.

        Keeping the name means the datastore records in the quantum graph, which are
        keyed by it, apply to the local datastore; the registry section is dropped:
        a job never talks to the DBB registry.
        """
        self.repo.mkdir(parents=True, exist_ok=True)
        datastore = Config(dbb.config.toDict())
        datastore["root"] = BUTLER_ROOT_TOKEN
        datastore["name"] = dbb.name
        config = Config({"datastore": datastore.toDict()})
        uri = ResourcePath(self.repo / "butler.yaml")
        config.dumpToUri(uri, overwrite=True)
        return uri


def workspace_butler(
    qg: PredictedQuantumGraph,
    local_repo: str,
    *,
    inputs: Iterable[uuid.UUID] = (),
    outputs: Iterable[uuid.UUID] = (),
    records: Mapping[str, DatastoreRecordData] | None = None,
) -> QuantumBackedButler:
    """Return a QBB over the workspace datastore that may read ``inputs`` and write ``outputs``.

    With the ``records`` of the files the workspace holds, lookups are fast; without
    them it reads in trust mode, finding each file at its templated location.  The
    butler keeps its datastore records in dicts (`pilot.memory_records`), not in the
    private SQLite a quantum-backed butler otherwise creates: one dict lookup per
    file instead of one SQL query.
    """
    return QuantumBackedButler.from_predicted(
        config=local_repo,
        predicted_inputs=list(inputs),
        predicted_outputs=list(outputs),
        dimensions=qg.pipeline_graph.universe,
        datastore_records=dict(records or {}),
        dataset_types={d.name: d.dataset_type for d in qg.pipeline_graph.dataset_types.values()},
        OpaqueManagerClass=MemoryOpaqueTableStorageManager,
        BridgeManagerClass=MemoryBridgeManager,
    )
