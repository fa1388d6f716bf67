"""`perftune db import`: every file checked before the store is opened, one transaction after.
A bad export exits 2 with one line naming the file and the field, and leaves the store as it
was (byte for byte)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perftune.errors import StoreError
from perftune.store.db import Store, read_export
from perftune.store.schema import CAMPAIGN_STATUSES, MEASUREMENT_STATUSES
from tests.conftest import fingerprint

Cli = Callable[..., tuple[int, str, str]]


def _row(key: str, **extra: object) -> dict[str, object]:
    return {"key": key, "campaign_id": "c1", "device_id": "dev", "family": "gemm",
            "dataflow": "triton", "dtype": "fp16", "shape": "m=1,n=2,k=3", "config": "{}",
            "status": "ok", "runtime_ms": 1.0, "reps": 10, "software_key": "sw",
            "measured_at": "2026-11-23 10:00:00", **extra}


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An export of one device, one campaign and three measurements."""
    source = tmp_path / "source.duckdb"
    with Store(source) as store:
        store.upsert_device({"device_id": "dev", "name": "Test GPU", "kind": "gpu"})
        store.start_campaign({"campaign_id": "c1", "device_id": "dev", "family": "gemm"})
        store.finish_campaign("c1", status="finished", written=3)
        store.insert("measurements", [_row("a"), _row("b"), _row("c", status="timeout",
                                                                    runtime_ms=None)])
        store.export_parquet(tmp_path / "export")
    return tmp_path / "export"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A store with a row of its own, which a refused import must leave as it is."""
    path = tmp_path / "target.duckdb"
    with Store(path) as store:
        store.insert("measurements", [_row("mine", campaign_id=None)])
    return path


def _table(directory: Path, name: str) -> pa.Table:
    return pq.read_table(directory / f"{name}.parquet")


def _write(directory: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, directory / f"{name}.parquet")


def _set(name: str, column: str, values: list[Any], arrow_type: Any = None) -> Callable[[Path],
                                                                                    None]:
    def change(directory: Path) -> None:
        table = _table(directory, name)
        array = pa.array(values, type=arrow_type)
        table = table.set_column(table.column_names.index(column), column, array)
        _write(directory, name, table)

    return change


def _add_column(directory: Path) -> None:
    table = _table(directory, "measurements")
    _write(directory, "measurements", table.append_column("bogus", pa.array([1, 2, 3])))


def _manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        path = directory / "manifest.json"
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps(change(manifest)))

    return edit


def _text(name: str, text: str | bytes) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        path = directory / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)

    return write


def _truncate(directory: Path) -> None:
    path = directory / "measurements.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rows(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["rows"]["measurements"] = 5
    return manifest


BAD_EXPORTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("extra column", _add_column, "measurements.parquet: unknown columns ['bogus']"),
    ("NULL key", _set("measurements", "key", ["a", None, "c"]),
     "measurements.parquet: column key has 1 NULL"),
    ("NULL required", _set("measurements", "shape", ["s", "s", None]),
     "measurements.parquet: column shape has 1 NULL"),
    ("repeated key", _set("measurements", "key", ["a", "a", "c"]),
     "measurements.parquet: column key repeats a key"),
    ("runtime as text", _set("measurements", "runtime_ms", ["1", "2", None]),
     "measurements.parquet: column runtime_ms is string, not DOUBLE"),
    ("timestamp as text", _set("measurements", "measured_at", ["x", "y", "z"]),
     "measurements.parquet: column measured_at is string, not TIMESTAMP"),
    ("size as float", _set("measurements", "m", [1.5, 2.0, 3.0]),
     "measurements.parquet: column m is double, not BIGINT"),
    ("unknown status", _set("measurements", "status", ["ok", "great", "ok"]),
     "measurements.parquet: column status holds ['great']"),
    ("unknown campaign status", _set("campaigns", "status", ["paused"]),
     "campaigns.parquet: column status holds ['paused']"),
    ("negative runtime", _set("measurements", "runtime_ms", [1.0, -2.0, None]),
     "measurements.parquet: column runtime_ms holds a negative value"),
    ("NaN runtime", _set("measurements", "runtime_ms", [1.0, float("nan"), None]),
     "measurements.parquet: column runtime_ms holds NaN"),
    ("infinite runtime", _set("measurements", "runtime_ms", [1.0, float("inf"), None]),
     "measurements.parquet: column runtime_ms holds an infinite value"),
    ("random Parquet", _text("measurements.parquet", bytes(range(256)) * 8),
     "measurements.parquet is not a readable Parquet file"),
    ("truncated Parquet", _truncate, "measurements.parquet is not a readable Parquet file"),
    ("row counts", _manifest(_rows),
     "manifest.json: rows.measurements is 5 but measurements.parquet holds 3 rows"),
    ("manifest a list", _text("manifest.json", "[1, 2]"),
     "manifest.json must hold a JSON object, not a list"),
    ("manifest not JSON", _text("manifest.json", "{schema_version: 2"),
     "manifest.json is not valid JSON"),
    ("manifest binary", _text("manifest.json", b"\xff\xfe\x00{"),
     "manifest.json is not valid JSON"),
    ("manifest deep", _text("manifest.json", "[" * 100_000 + "]" * 100_000),
     "manifest.json is not valid JSON (nested too deeply)"),
    ("schema two", _manifest(lambda m: {**m, "schema_version": "two"}),
     "manifest.json: schema_version must be a whole number, not 'two'"),
    ("no schema", _manifest(lambda m: {k: v for k, v in m.items() if k != "schema_version"}),
     "manifest.json: schema_version must be a whole number, not None"),
    ("schema newer", _manifest(lambda m: {**m, "schema_version": 99}), "newer than"),
]


@pytest.mark.parametrize(("case", "damage", "message"), BAD_EXPORTS,
                         ids=[case for case, _, _ in BAD_EXPORTS])
def test_bad_export_exits_2_and_leaves_the_store(case: str, damage: Callable[[Path], None],
                                                 message: str, export: Path, target: Path,
                                                 tmp_path: Path, cli: Cli) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    damage(bad)
    before = fingerprint(target)
    code, out, err = cli("db", "import", bad, "--db", target)
    assert code == 2, (case, out, err)
    assert err.startswith("perftune: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert fingerprint(target) == before


def test_a_good_export_still_imports(export: Path, target: Path, cli: Cli) -> None:
    code, out, err = cli("db", "import", export, "--db", target)
    assert code == 0, err
    assert "devices 1, campaigns 1, measurements 3" in out


def test_import_is_one_transaction(export: Path, target: Path) -> None:
    """A fault that only the database finds (here a count too large for its INTEGER column)
    leaves no table written, devices and campaigns included."""
    frames = read_export(export)
    reps = frames["measurements"]["reps"].astype("int64")
    reps[0] = 2**40
    frames["measurements"]["reps"] = reps
    with Store(target) as store:
        before = {t: len(store.query(f"SELECT * FROM {t}")) for t in frames}
        with pytest.raises(StoreError, match="nothing was written"):
            store.import_frames(frames)
        after = {t: len(store.query(f"SELECT * FROM {t}")) for t in frames}
    assert after == before == {"devices": 0, "campaigns": 0, "measurements": 1}


def test_the_shipped_dataset_passes_the_checks() -> None:
    """Its campaigns include interrupted ones without finished_at: that is allowed."""
    from perftune.settings import DATASET_DIR

    frames = read_export(DATASET_DIR)
    campaigns = frames["campaigns"]
    assert (campaigns["finished_at"].isna() & (campaigns["status"] == "interrupted")).any()
    assert set(frames["measurements"]["status"]) <= set(MEASUREMENT_STATUSES)
    assert set(campaigns["status"]) <= set(CAMPAIGN_STATUSES)


def test_worker_statuses_are_the_stores() -> None:
    from perftune.collect import worker

    assert (worker.OK, worker.COMPILE_ERROR, worker.LAUNCH_ERROR, worker.WRONG_RESULT,
            worker.TIMEOUT, worker.OOM) == worker.STATUSES == MEASUREMENT_STATUSES
