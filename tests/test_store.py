"""The DuckDB store: schema versions, idempotent writes, read-only opening, Parquet in/out."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from perftune.errors import StoreError
from perftune.store.db import Store, compact_store, read_export
from perftune.store.schema import SCHEMA_VERSION
from tests.conftest import fingerprint


def _row(key: str, **extra: object) -> dict[str, object]:
    return {"key": key, "device_id": "dev", "family": "gemm", "dataflow": "triton",
            "dtype": "fp16", "shape": "m=1,n=2,k=3", "config": "{}", "status": "ok",
            "runtime_ms": 1.0, "software_key": "sw", "measured_at": "2026-11-23 10:00:00",
            **extra}


def test_new_store_has_current_schema(db: Path) -> None:
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {"devices", "campaigns", "measurements"} <= store._tables()


def test_insert_skips_stored_keys(db: Path) -> None:
    with Store(db) as store:
        assert store.insert("measurements", [_row("a"), _row("b")]) == 2
        assert store.insert("measurements", [_row("b"), _row("c")]) == 1
        assert store.query("SELECT count(*) AS n FROM measurements")["n"][0] == 3
        assert store.existing_keys(["a", "c", "zzz"]) == {"a", "c"}


def test_read_only_store_refuses_writes(db: Path) -> None:
    Store(db).close()
    with Store(db, read_only=True) as store, pytest.raises(StoreError, match="read-only"):
        store.insert("measurements", [_row("a")])


def test_read_only_needs_an_existing_store(db: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store(db, read_only=True)
    assert not db.exists()


def test_text_file_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("hello, not a database\n" * 10)
    before = fingerprint(path)
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store(path)
    assert fingerprint(path) == before


def test_foreign_duckdb_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    before = fingerprint(path)
    with pytest.raises(StoreError, match="not a perftune store"):
        Store(path)
    assert fingerprint(path) == before


def test_newer_schema_is_refused(db: Path) -> None:
    with Store(db) as store:
        store.insert("measurements", [_row("a")])
        store.con.execute("UPDATE perftune_meta SET value = '99' WHERE name = 'schema_version'")
    before = fingerprint(db)
    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store(db)
    assert fingerprint(db) == before


def test_export_import_round_trip(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        store.upsert_device({"device_id": "dev", "name": "Test GPU", "kind": "gpu"})
        store.insert("measurements", [_row("a"), _row("b", status="wrong_result",
                                                       runtime_ms=None)])
        original = store.query("SELECT * FROM measurements ORDER BY key")
        counts = store.export_parquet(tmp_path / "export")
    assert counts == {"measurements": 2, "devices": 1, "campaigns": 0}
    copy = tmp_path / "copy.duckdb"
    with Store(copy) as store:
        assert store.import_parquet(tmp_path / "export")["measurements"] == 2
        assert store.import_parquet(tmp_path / "export")["measurements"] == 0
        restored = store.query("SELECT * FROM measurements ORDER BY key")
        assert store.device("dev")["name"] == "Test GPU"  # type: ignore[index]
    assert restored.equals(original)


def test_import_refreshes_rows_measured_again_later(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        store.insert("measurements", [_row("a"), _row("b")])
        store.export_parquet(tmp_path / "first")
        store.update_measurements({"a": {"runtime_ms": 0.5, "timer": "newer",
                                         "measured_at": "2026-11-24 10:00:00"}})
        store.export_parquet(tmp_path / "second")
    copy = tmp_path / "copy.duckdb"
    with Store(copy) as store:
        store.import_parquet(tmp_path / "first")
        counts = store.import_parquet(tmp_path / "second")
        assert counts["measurements"] == 0 and counts["refreshed"] == 1
        assert store.import_parquet(tmp_path / "first")["refreshed"] == 0  # older: kept
        rows = store.query("SELECT key, runtime_ms, timer FROM measurements ORDER BY key")
    assert rows["runtime_ms"].tolist() == [0.5, 1.0] and rows["timer"][0] == "newer"


def test_filtered_export(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        store.insert("measurements", [_row("a"), _row("b", status="timeout", runtime_ms=None)])
        counts = store.export_parquet(tmp_path / "ok", status="ok")
    assert counts["measurements"] == 1
    assert list(read_export(tmp_path / "ok")["measurements"]["key"]) == ["a"]


def test_incomplete_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no manifest"):
        read_export(tmp_path)


def test_v1_store_is_migrated_and_keeps_its_rows(db: Path) -> None:
    from perftune.store.schema import MIGRATIONS

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE perftune_meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO perftune_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO measurements (key, device_id, family, dataflow, dtype, shape, "
                "config, status, software_key, measured_at, energy_per_call_j) VALUES "
                "('old', 'dev', 'gemm', 'triton', 'fp16', 's', '{}', 'ok', 'sw', now(), 1.5)")
    con.close()
    with pytest.raises(StoreError, match="perftune db migrate"):
        Store(db, read_only=True)
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        row = store.query("SELECT energy_per_call_j, energy_method FROM measurements").iloc[0]
        assert row["energy_per_call_j"] == 1.5 and row["energy_method"] is None
        assert store.energy_targets(["old", "other"]) == {}  # no runtime: not ok-timed
        store.con.execute("UPDATE measurements SET runtime_ms = 2.0")
        assert store.energy_targets(["old", "other"]) == {"old": 2.0}
        assert store.update_measurements({"old": {"energy_per_call_j": 0.5,
                                                  "energy_method": "busy-queue"}}) == 1
        assert store.energy_targets(["old"]) == {}
        with pytest.raises(StoreError, match="cannot update"):
            store.update_measurements({"old": {"nonsense": 1}})


def test_compact_keeps_every_row_and_the_key_constraint(db: Path) -> None:
    rows = [_row(f"k{i}", runtime_ms=float(i)) for i in range(3000)]
    with Store(db) as store:
        store.insert("measurements", rows)
        for shift in (1, 2, 3):  # re-measured rows leave free blocks behind
            store.update_measurements({f"k{i}": {"runtime_ms": float(i + shift)}
                                       for i in range(3000)})
        original = store.query("SELECT * FROM measurements ORDER BY key")
    before, after = compact_store(db)
    assert 0 < after <= before
    assert not db.with_name(db.name + ".compacting").exists()
    with Store(db) as store:
        assert store.query("SELECT * FROM measurements ORDER BY key").equals(original)
        assert store.schema_version() == SCHEMA_VERSION
        with pytest.raises(duckdb.ConstraintException):
            store.con.execute("INSERT INTO measurements BY NAME SELECT * FROM measurements "
                              "LIMIT 1")


def test_compact_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        compact_store(tmp_path / "missing.duckdb")
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database")
    with pytest.raises(StoreError):
        compact_store(text)
    assert text.read_text() == "not a database"
