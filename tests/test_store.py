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
        assert store.schema_version() == SCHEMA_VERSION
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


def test_v2_store_gains_the_sizes_of_its_rows(db: Path) -> None:
    import json

    from perftune.store.schema import MIGRATIONS

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE perftune_meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
    for statement in [*MIGRATIONS[0], *MIGRATIONS[1]]:
        con.execute(statement)
    con.execute("INSERT INTO perftune_meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO measurements (key, device_id, family, dataflow, dtype, shape, "
                "config, status, software_key, measured_at) VALUES ('old', 'dev', "
                "'decode_attention', 'sdpa', 'fp16', 'batch=2,heads=8,kv_heads=2,"
                "context=4096,head_dim=64', '{}', 'ok', 'sw', now())")
    con.close()
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        store.insert("measurements", [_row("new")])  # no sizes given: from its shape
        rows = store.query("SELECT key, shape, sizes, CAST(json_extract(sizes, '$.context') "
                           "AS INTEGER) AS context FROM measurements ORDER BY key")
    sizes = {key: json.loads(text) for key, text in zip(rows["key"], rows["sizes"],
                                                         strict=True)}
    assert sizes["old"] == {"batch": 2, "heads": 8, "kv_heads": 2, "context": 4096,
                            "head_dim": 64}
    assert rows["context"].tolist()[1] == 4096
    shape = rows.set_index("key")["shape"]["new"]
    assert sizes["new"] == {k: int(v) for k, v in (p.split("=") for p in shape.split(","))}


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


def _dead_campaign(db: Path) -> None:
    """A store as a SIGKILLed collection leaves it: a running campaign with two rows."""
    with Store(db) as store:
        store.insert("measurements", [_row("a", campaign_id="dead",
                                           measured_at="2026-11-23 10:00:00"),
                                      _row("b", campaign_id="dead",
                                           measured_at="2026-11-23 10:05:00")])
    con = duckdb.connect(str(db))  # written behind the store's back, as by another process
    con.execute("INSERT INTO campaigns (campaign_id, started_at, status) VALUES "
                "('dead', '2026-11-23 09:59:00', 'running'), "
                "('empty', '2026-11-23 11:00:00', 'running')")
    con.close()


def test_a_writer_closes_campaigns_left_running_by_dead_processes(db: Path) -> None:
    _dead_campaign(db)
    before = fingerprint(db)
    with Store(db, read_only=True) as store:
        assert store.recovered == 0  # readers change nothing
    assert fingerprint(db) == before
    with Store(db) as store:
        assert store.recovered == 2
        rows = store.query("SELECT campaign_id, status, finished_at, written FROM campaigns "
                           "ORDER BY campaign_id").to_dict("records")
    assert [r["status"] for r in rows] == ["interrupted", "interrupted"]
    by_id = {r["campaign_id"]: r for r in rows}
    dead, empty = by_id["dead"], by_id["empty"]
    assert str(dead["finished_at"]) == "2026-11-23 10:05:00"  # its last stored row
    assert dead["written"] == 2
    assert str(empty["finished_at"]) == "2026-11-23 11:00:00" and empty["written"] == 0
    with Store(db) as store:
        assert store.recovered == 0


def test_a_running_campaign_of_this_process_is_left_running(db: Path) -> None:
    with Store(db) as first:
        first.start_campaign({"campaign_id": "live"})
        with Store(db) as second:  # the same process: its campaign is alive
            assert second.recovered == 0
        first.finish_campaign("live", status="finished", written=0)
        first.finish_campaign("live", status="interrupted", written=5)  # closed: kept
        row = first.query("SELECT status, written FROM campaigns").iloc[0]
    assert row["status"] == "finished" and row["written"] == 0


def test_campaigns_without_finished_at_read_fine(shipped: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped data has interrupted campaigns without finished_at."""
    import json

    from perftune.cli import main

    with Store(shipped, read_only=True) as store:
        campaigns = store.campaigns()
        counts = store.campaign_counts()
    open_ended = campaigns[campaigns["finished_at"].isna()]
    assert len(open_ended) > 0 and open_ended["duration_s"].isna().all()
    assert set(open_ended["status"]) == {"interrupted"}
    assert counts["campaigns"].sum() == len(campaigns)
    assert main(["db", "stats", "--campaigns", "--json", "--db", str(shipped)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == len(campaigns)
    assert sum(c["finished_at"] is None for c in listed) == len(open_ended)
    assert main(["db", "stats", "--db", str(shipped)]) == 0
    assert "with_finished_at" in capsys.readouterr().out

