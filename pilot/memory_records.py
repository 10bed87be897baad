"""Datastore records kept in Python dicts instead of the quantum-backed butler's SQLite.

A `QuantumBackedButler` has no registry: its datastore keeps the records of the
files it holds (``file_datastore_records``) and the list of datasets it stores
(the registry "bridge") in a private in-memory SQLite database.  Every ``put``
then costs two SQL inserts, each in its own transaction, and every lookup of a
record one SQL query.  The pilot's butlers over a workspace
(`pilot.workspace.workspace_butler`) pay that per file: a worker three puts per
quantum (output, task metadata, task log) for records it only exports at the end
(`ChainingButler.persisted_records`); stage-out one lookup per file it zips and
describes.  `QuantumBackedButler.from_predicted` takes the manager classes of both
tables as arguments (``OpaqueManagerClass``, ``BridgeManagerClass``); the ones here
keep the same rows in dicts, and the bridge is the stack's own
`EphemeralDatastoreRegistryBridge`.  The files written, and the records exported,
are the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from lsst.daf.butler import DimensionUniverse, ddl
from lsst.daf.butler.datastore import DatastoreTransaction
from lsst.daf.butler.registry.bridge.ephemeral import EphemeralDatastoreRegistryBridge
from lsst.daf.butler.registry.interfaces import (
    Database,
    DatasetIdRef,
    DatasetRecordStorageManager,
    DatastoreRegistryBridge,
    DatastoreRegistryBridgeManager,
    OpaqueTableStorage,
    OpaqueTableStorageManager,
    StaticTablesContext,
    VersionTuple,
)

_Row = dict[str, Any]


class MemoryOpaqueTable(OpaqueTableStorage):
    """One opaque table's rows, indexed by their primary key.

    Parameters
    ----------
    name : `str`
        Name of the logical table.
    spec : `lsst.daf.butler.ddl.TableSpec`
        Its schema: the primary-key columns are the unique key of a row.
    """

    def __init__(self, name: str, spec: ddl.TableSpec) -> None:
        super().__init__(name=name)
        self._key = tuple(field.name for field in spec.fields if field.primaryKey)
        if "dataset_id" not in self._key:
            # Every datastore table is keyed by dataset ID; the index below relies on it.
            raise ValueError(f"opaque table {name} has no dataset_id in its primary key {self._key}")
        # dataset_id -> primary key -> row: the datastore asks by dataset ID almost always.
        self._rows: dict[uuid.UUID, dict[tuple[Any, ...], _Row]] = {}

    def _key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[column] for column in self._key)

    def insert(self, *data: dict, transaction: DatastoreTransaction | None = None) -> None:
        """Add rows; a primary key already there, or twice in ``data``, is an error (as in SQL).

        Raises
        ------
        KeyError
            A row's primary key is taken; no row was added.
        """
        seen: set[tuple[Any, ...]] = set()
        for row in data:
            key = self._key_of(row)
            if key in seen or key in self._rows.get(row["dataset_id"], {}):
                raise KeyError(f"a row with key {key} is already in table {self.name}")
            seen.add(key)
        self._add(data, transaction)

    def ensure(self, *data: dict, transaction: DatastoreTransaction | None = None) -> None:
        """Add the rows whose primary key is not there yet."""
        self._add(
            [row for row in data if self._key_of(row) not in self._rows.get(row["dataset_id"], {})],
            transaction,
        )

    def replace(self, *data: dict, transaction: DatastoreTransaction | None = None) -> None:
        """Add rows, replacing any with the same primary key."""
        self._add(data, transaction)

    def _add(self, data: Sequence[dict], transaction: DatastoreTransaction | None) -> None:
        added = []
        for row in data:
            key = self._key_of(row)
            self._rows.setdefault(row["dataset_id"], {})[key] = dict(row)
            added.append((row["dataset_id"], key))
        if transaction is not None and added:
            # What a database's rollback would do: a failed datastore transaction drops the rows.
            transaction.registerUndo("insert", self._remove, added)

    def _remove(self, keys: Iterable[tuple[uuid.UUID, tuple[Any, ...]]]) -> None:
        for dataset_id, key in keys:
            rows = self._rows.get(dataset_id, {})
            rows.pop(key, None)
            if not rows:
                self._rows.pop(dataset_id, None)

    def fetch(self, **where: Any) -> Iterator[Mapping[Any, Any]]:
        """Rows matching every constraint: a value, a collection of values, or a ``"prefix%"`` string."""
        dataset_ids = where.pop("dataset_id", None)
        if dataset_ids is None:
            candidates: Iterable[dict[tuple[Any, ...], _Row]] = list(self._rows.values())
        elif isinstance(dataset_ids, list | tuple | set | frozenset):
            candidates = [self._rows[i] for i in set(dataset_ids) if i in self._rows]
        else:
            candidates = [self._rows[dataset_ids]] if dataset_ids in self._rows else []
        tests = [_matcher(column, value) for column, value in where.items()]
        for rows in candidates:
            for row in list(rows.values()):
                if all(test(row) for test in tests):
                    yield dict(row)

    def fetch_batches(self, **where: Any) -> Iterator[Sequence[Mapping]]:
        """All matching rows as one batch (they are in memory already)."""
        yield list(self.fetch(**where))

    def delete(self, columns: Iterable[str], *rows: dict) -> None:
        """Remove the rows equal to one of ``rows`` on ``columns``."""
        columns = list(columns)
        for where in rows:
            for match in list(self.fetch(**{column: where[column] for column in columns})):
                self._remove([(match["dataset_id"], self._key_of(match))])


def _matcher(column: str, value: Any) -> Callable[[Mapping[str, Any]], bool]:
    """A test of one row on one column, with the meaning `ByNameOpaqueTableStorage` gives ``value``."""
    if isinstance(value, list | tuple | set | frozenset):
        wanted = set(value)
        return lambda row: row[column] in wanted
    if isinstance(value, str) and value.endswith("%"):
        prefix = value[:-1]
        return lambda row: isinstance(row[column], str) and row[column].startswith(prefix)
    return lambda row: row[column] == value


class MemoryOpaqueTableStorageManager(OpaqueTableStorageManager):
    """Opaque tables in memory, for `QuantumBackedButler.from_predicted` (``OpaqueManagerClass``)."""

    def __init__(self, registry_schema_version: VersionTuple | None = None) -> None:
        super().__init__(registry_schema_version=registry_schema_version)
        self._tables: dict[str, MemoryOpaqueTable] = {}

    @classmethod
    def initialize(
        cls, db: Database, context: StaticTablesContext, registry_schema_version: VersionTuple | None = None
    ) -> OpaqueTableStorageManager:
        # The database is the butler's throw-away SQLite; nothing is declared in it.
        return cls(registry_schema_version=registry_schema_version)

    def clone(self, db: Database) -> OpaqueTableStorageManager:
        return self

    def get(self, name: str) -> OpaqueTableStorage | None:
        return self._tables.get(name)

    def register(self, name: str, spec: ddl.TableSpec) -> OpaqueTableStorage:
        return self._tables.setdefault(name, MemoryOpaqueTable(name, spec))

    @classmethod
    def currentVersions(cls) -> list[VersionTuple]:
        return []


class MemoryBridgeManager(DatastoreRegistryBridgeManager):
    """The datastore's dataset list as a Python set (`EphemeralDatastoreRegistryBridge`).

    For `QuantumBackedButler.from_predicted` (``BridgeManagerClass``).
    """

    def __init__(
        self,
        opaque: OpaqueTableStorageManager,
        universe: DimensionUniverse,
        registry_schema_version: VersionTuple | None = None,
    ) -> None:
        super().__init__(opaque=opaque, universe=universe, registry_schema_version=registry_schema_version)
        self._bridges: dict[str, EphemeralDatastoreRegistryBridge] = {}

    @classmethod
    def initialize(
        cls,
        db: Database,
        context: StaticTablesContext,
        *,
        opaque: OpaqueTableStorageManager,
        datasets: type[DatasetRecordStorageManager],
        universe: DimensionUniverse,
        registry_schema_version: VersionTuple | None = None,
    ) -> DatastoreRegistryBridgeManager:
        return cls(opaque, universe, registry_schema_version)

    def clone(self, *, db: Database, opaque: OpaqueTableStorageManager) -> DatastoreRegistryBridgeManager:
        return MemoryBridgeManager(opaque, self.universe, self._registry_schema_version)

    def refresh(self) -> None:
        """Nothing to refresh: no other client shares these tables."""

    def register(self, name: str, *, ephemeral: bool = False) -> DatastoreRegistryBridge:
        return self._bridges.setdefault(name, EphemeralDatastoreRegistryBridge(name))

    def findDatastores(self, ref: DatasetIdRef) -> Iterable[str]:
        return [name for name, bridge in self._bridges.items() if ref in bridge]

    @classmethod
    def currentVersions(cls) -> list[VersionTuple]:
        return []
