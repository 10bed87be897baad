"""The in-memory datastore records table answers as the SQL one it replaces in the workers' butler."""

from __future__ import annotations

import uuid

import pytest
from lsst.daf.butler.datastore import DatastoreTransaction
from lsst.daf.butler.datastores.fileDatastore import FileDatastore
from lsst.daf.butler.registry.interfaces import FakeDatasetRef

from pilot.memory_records import (
    MemoryBridgeManager,
    MemoryOpaqueTable,
    MemoryOpaqueTableStorageManager,
)

NULL = "__NULL_STRING__"


def row(dataset_id: uuid.UUID, path: str, component: str = NULL, size: int = 1) -> dict:
    return {
        "dataset_id": dataset_id,
        "path": path,
        "formatter": "f",
        "storage_class": "s",
        "component": component,
        "checksum": None,
        "file_size": size,
    }


@pytest.fixture
def table() -> MemoryOpaqueTable:
    return MemoryOpaqueTable("file_datastore_records", FileDatastore.makeTableSpec())


def test_insert_rejects_a_duplicate_key_ensure_skips_it_replace_overwrites(table: MemoryOpaqueTable) -> None:
    a = uuid.uuid4()
    table.insert(row(a, "p"), row(a, "p#c", component="c"))
    with pytest.raises(KeyError):
        table.insert(row(a, "q"))
    b = uuid.uuid4()
    with pytest.raises(KeyError):  # twice in one call: neither is added
        table.insert(row(b, "r"), row(b, "s"))
    assert list(table.fetch(dataset_id=b)) == []
    table.ensure(row(a, "q"))
    assert sorted(r["path"] for r in table.fetch(dataset_id=a)) == ["p", "p#c"]
    table.replace(row(a, "q"))
    assert sorted(r["path"] for r in table.fetch(dataset_id=a)) == ["p#c", "q"]


def test_fetch_by_id_by_ids_by_path_and_by_prefix(table: MemoryOpaqueTable) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    table.insert(row(a, "x/a"), row(b, "x/b"), row(c, "y/c#1", component="c1"))
    assert [r["dataset_id"] for r in table.fetch(dataset_id=a)] == [a]
    assert {r["dataset_id"] for r in table.fetch(dataset_id=[a, c, uuid.uuid4()])} == {a, c}
    assert {r["dataset_id"] for r in table.fetch(path={"x/a", "x/b"})} == {a, b}
    assert [r["dataset_id"] for r in table.fetch(path="y/c#%")] == [c]
    assert [r["dataset_id"] for r in table.fetch(dataset_id=b, path="x/a")] == []
    assert len(list(table.fetch())) == 3
    (batch,) = table.fetch_batches(dataset_id={a, b})
    assert len(batch) == 2
    # Rows handed out are copies: changing one does not change the table.
    (fetched,) = table.fetch(dataset_id=a)
    fetched["path"] = "changed"
    assert next(iter(table.fetch(dataset_id=a)))["path"] == "x/a"


def test_delete_by_columns(table: MemoryOpaqueTable) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    table.insert(row(a, "p"), row(a, "p#c", component="c"), row(b, "q"))
    table.delete(["dataset_id"], {"dataset_id": a})
    assert [r["dataset_id"] for r in table.fetch()] == [b]
    table.delete(["dataset_id", "component"], {"dataset_id": b, "component": NULL})
    assert list(table.fetch()) == []


def test_a_rolled_back_transaction_takes_its_rows_back(table: MemoryOpaqueTable) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    table.insert(row(a, "p"))
    transaction = DatastoreTransaction()
    table.insert(row(b, "q"), transaction=transaction)
    transaction.rollback()
    assert [r["dataset_id"] for r in table.fetch()] == [a]


def test_managers_hand_out_one_table_and_the_stacks_ephemeral_bridge() -> None:
    opaque = MemoryOpaqueTableStorageManager()
    spec = FileDatastore.makeTableSpec()
    assert opaque.register("t", spec) is opaque.register("t", spec) is opaque.get("t")
    assert opaque.get("other") is None
    bridges = MemoryBridgeManager(opaque, universe=None)  # type: ignore[arg-type]
    bridge = bridges.register("store")
    ref = FakeDatasetRef(uuid.uuid4())
    bridge.insert([ref])
    assert ref in bridge and list(bridges.findDatastores(ref)) == ["store"]
