"""The DuckDB store: one file, versioned schema, idempotent writes, Parquet in and out."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pandas as pd

from perftune.errors import StoreError
from perftune.settings import default_db_path
from perftune.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES

_META = "perftune_meta"
_KEYS = {"devices": "device_id", "campaigns": "campaign_id", "measurements": "key"}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Store:
    """A perftune store in one DuckDB file.

    Writers open it normally (one process at a time, as DuckDB allows); readers pass
    ``read_only=True``. Opening checks that the file is a perftune store whose schema this code
    knows, and migrates an older one when opened for writing.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False):
        self.path = Path(path) if path is not None else default_db_path()
        self.read_only = read_only
        self._con = self._connect()
        try:
            self._check_and_migrate()
        except BaseException:
            self._con.close()
            raise

    # -- opening ------------------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give the path of a .duckdb file")
        if not self.path.exists():
            if self.read_only:
                raise StoreError(
                    f"no store at {self.path}; create one with `perftune collect` or "
                    f"`perftune db import`, or point --db / PERFTUNE_DB at an existing store")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not _looks_like_duckdb(self.path):
            raise StoreError(
                f"{self.path} is not a DuckDB database (so not a perftune store); "
                f"pass --db with the path of a perftune store or a new file name")
        try:
            return duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _check_and_migrate(self) -> None:
        version = self.schema_version()
        if version is None:
            if self._tables():
                raise StoreError(
                    f"{self.path} is a DuckDB database but not a perftune store (it has no "
                    f"{_META} table); use another file for --db")
            version = 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this perftune "
                f"understands ({SCHEMA_VERSION}); upgrade perftune to read it")
        if version < SCHEMA_VERSION:
            if self.read_only:
                raise StoreError(
                    f"{self.path} has schema version {version} and needs migrating to "
                    f"{SCHEMA_VERSION}; run `perftune db migrate --db {self.path}` once")
            self._migrate(version)

    def _tables(self) -> set[str]:
        rows = self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        return {r[0] for r in rows}

    def schema_version(self) -> int | None:
        if _META not in self._tables():
            return None
        rows = self._con.execute(
            f"SELECT value FROM {_META} WHERE name = 'schema_version'").fetchall()
        return int(rows[0][0]) if rows else None

    def _migrate(self, version: int) -> None:
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            if version == 0:
                con.execute(f"CREATE TABLE {_META} (name VARCHAR PRIMARY KEY, value VARCHAR)")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    con.execute(statement)
            con.execute(f"INSERT OR REPLACE INTO {_META} VALUES ('schema_version', ?)",
                        [str(SCHEMA_VERSION)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        return self._con

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Insert rows, skipping any whose key is already stored. Returns how many were new."""
        self._require_writable()
        columns = TABLES[table]
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if frame.empty:
            return 0
        unknown = set(frame.columns) - set(columns)
        if unknown:
            raise StoreError(f"unknown {table} columns: {sorted(unknown)}")
        frame = frame.reindex(columns=list(columns))
        frame = frame.drop_duplicates(subset=[_KEYS[table]])
        con = self._con
        with self._registered("_incoming", frame):
            try:
                con.execute("BEGIN TRANSACTION")
                before = _count(con, table)
                casts = ", ".join(f"CAST({c} AS {columns[c].split()[0]}) AS {c}"
                                  for c in columns)
                con.execute(f"INSERT OR IGNORE INTO {table} SELECT {casts} FROM _incoming")
                inserted = _count(con, table) - before
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return inserted

    @contextlib.contextmanager
    def _registered(self, name: str, frame: pd.DataFrame) -> Iterator[None]:
        """``frame`` visible to SQL as the table ``name`` for the block."""
        self._con.register(name, frame)
        try:
            yield
        finally:
            self._con.unregister(name)

    def update_measurements(self, updates: Mapping[str, Mapping[str, Any]]) -> int:
        """Set columns of stored measurements by key, in one transaction. Returns how many
        rows were updated."""
        self._require_writable()
        columns = TABLES["measurements"]
        con, updated = self._con, 0
        con.execute("BEGIN TRANSACTION")
        try:
            for key, values in updates.items():
                unknown = set(values) - set(columns)
                if unknown or "key" in values:
                    raise StoreError(f"cannot update measurement columns {sorted(unknown)}")
                assignments = ", ".join(f"{name} = ?" for name in values)
                rows = con.execute(f"UPDATE measurements SET {assignments} WHERE key = ? "
                                   f"RETURNING key", [*values.values(), key]).fetchall()
                updated += len(rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return updated

    def energy_targets(self, keys: Iterable[str]) -> dict[str, float]:
        """Of these keys, the ok measurements without energy, with their runtime (ms)."""
        rows = self._of_keys(keys, "SELECT m.key, m.runtime_ms FROM measurements m JOIN _wanted "
                             "w USING (key) WHERE m.status = 'ok' AND m.runtime_ms > 0 AND "
                             "m.energy_method IS NULL")
        return {key: float(runtime) for key, runtime in rows}

    def retime_targets(self, keys: Iterable[str], *, timer: str, below_ms: float,
                       energy_method: str | None = None,
                       timing: bool = True) -> dict[str, tuple[bool, bool, float]]:
        """Of these keys, the ok measurements faster than ``below_ms`` that another timer than
        ``timer`` took (unless not ``timing``) or whose energy came from ``energy_method``
        (where given), as (timing stale, has energy, runtime in ms)."""
        rows = self._of_keys(
            keys, "SELECT m.key, ? AND m.timer <> ?, m.energy_method IS NOT NULL, m.runtime_ms "
            "FROM measurements m JOIN _wanted w USING (key) WHERE m.status = 'ok' AND "
            "m.runtime_ms < ? AND ((? AND m.timer <> ?) OR m.energy_method = ?)",
            [timing, timer, below_ms, timing, timer, energy_method])
        return {key: (bool(time), bool(energy), float(runtime))
                for key, time, energy, runtime in rows}

    def _of_keys(self, keys: Iterable[str], sql: str,
                 params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, which joins the given keys as the table ``_wanted``."""
        frame = pd.DataFrame({"key": list(keys)})
        if frame.empty:
            return []
        with self._registered("_wanted", frame):
            return self._con.execute(sql, list(params)).fetchall()

    def upsert_device(self, device: Mapping[str, Any]) -> None:
        """Store a device; a later identity of the same device updates it, keeping ceilings."""
        self._require_writable()
        row = dict(device)
        row.setdefault("first_seen", now())
        existing = self.device(row["device_id"])
        if existing is None:
            self.insert("devices", [row])
            return
        updates = {k: v for k, v in row.items() if v is not None and k not in ("device_id",
                                                                             "first_seen")}
        if updates:
            assignments = ", ".join(f"{k} = ?" for k in updates)
            self._con.execute(f"UPDATE devices SET {assignments} WHERE device_id = ?",
                              [*updates.values(), row["device_id"]])

    def start_campaign(self, campaign: Mapping[str, Any]) -> None:
        self.insert("campaigns", [{"status": "running", "started_at": now(), **campaign}])

    def finish_campaign(self, campaign_id: str, *, status: str, written: int) -> None:
        self._require_writable()
        self._con.execute(
            "UPDATE campaigns SET status = ?, finished_at = ?, written = ? WHERE campaign_id = ?",
            [status, now(), written, campaign_id])

    # -- reading ------------------------------------------------------------------------------
    def device(self, device_id: str) -> dict[str, Any] | None:
        frame = self._con.execute("SELECT * FROM devices WHERE device_id = ?",
                                  [device_id]).fetchdf()
        return None if frame.empty else frame.iloc[0].to_dict()

    def existing_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of these measurement keys are already stored."""
        rows = self._of_keys(keys, "SELECT m.key FROM measurements m JOIN _wanted w USING (key)")
        return {r[0] for r in rows}

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self._con.execute(sql, params or []).fetchdf()

    def stats(self) -> pd.DataFrame:
        """Per device and family: problems, configs, ok/failed counts, energy coverage."""
        return self.query("""
            SELECT m.device_id, d.kind AS device_kind, m.family, m.dtype,
                   count(DISTINCT m.shape) AS problems,
                   count(DISTINCT m.dataflow || m.config) AS configs,
                   count(*) FILTER (WHERE m.status = 'ok') AS ok,
                   count(*) FILTER (WHERE m.status <> 'ok') AS failed,
                   count(*) FILTER (WHERE m.energy_per_call_j IS NOT NULL) AS with_energy
            FROM measurements m LEFT JOIN devices d USING (device_id)
            GROUP BY ALL ORDER BY ALL""")

    def status_counts(self) -> pd.DataFrame:
        return self.query("SELECT device_id, family, status, count(*) AS n FROM measurements "
                          "GROUP BY ALL ORDER BY ALL")

    # -- Parquet ------------------------------------------------------------------------------
    def export_parquet(self, directory: str | os.PathLike[str], *, device: str | None = None,
                       family: str | None = None, status: str | None = None) -> dict[str, int]:
        """Write the store (or the measurements matching the filters, and the devices and
        campaigns they refer to) as Parquet files plus a manifest. Returns rows per table."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        where, params = _filters(device=device, family=family, status=status)
        measured = f"SELECT * FROM measurements {where}"
        selections = {
            "measurements": measured,
            "devices": f"SELECT * FROM devices WHERE device_id IN "
                       f"(SELECT device_id FROM ({measured}))" if where else
                       "SELECT * FROM devices",
            "campaigns": f"SELECT * FROM campaigns WHERE campaign_id IN "
                         f"(SELECT campaign_id FROM ({measured}))" if where else
                         "SELECT * FROM campaigns",
        }
        counts: dict[str, int] = {}
        for table, sql in selections.items():
            repeats = sql.count("?") // len(params) if params else 0
            frame = self.query(sql, params * repeats)
            frame.to_parquet(out / f"{table}.parquet", compression="zstd", index=False)
            counts[table] = len(frame)
        manifest = {"schema_version": SCHEMA_VERSION, "exported_at": now().isoformat(),
                    "filters": {"device": device, "family": family, "status": status},
                    "rows": counts}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return counts

    def import_parquet(self, directory: str | os.PathLike[str]) -> dict[str, int]:
        """Load an export made by :meth:`export_parquet`: new rows are added, and stored
        measurements that the export holds a later measurement of (re-timed rows) are
        replaced by it (``refreshed``)."""
        source = Path(directory)
        frames = read_export(source)
        counts = {table: self.insert(table, frame) for table, frame in frames.items()}
        if "measurements" in frames:
            counts["refreshed"] = self._refresh_measurements(frames["measurements"])
        return counts

    def _refresh_measurements(self, frame: pd.DataFrame) -> int:
        """Replace stored measurements by the frame's rows of the same key measured later: a
        later timing, or a later campaign (an energy-only re-measure keeps the timing's date
        but moves the row to its campaign)."""
        columns = [c for c in TABLES["measurements"] if c in frame.columns and c != "key"]
        assignments = ", ".join(f"{c} = i.{c}" for c in columns)
        with self._registered("_incoming", frame):
            rows = self._con.execute(
                f"UPDATE measurements AS m SET {assignments} FROM _incoming AS i WHERE "
                f"m.key = i.key AND (i.measured_at > m.measured_at OR coalesce("
                f"{_STARTED.format('i')} > {_STARTED.format('m')}, false)) RETURNING m.key"
            ).fetchall()
        return len(rows)


_STARTED = "(SELECT started_at FROM campaigns c WHERE c.campaign_id = {}.campaign_id)"


def read_export(source: Path) -> dict[str, pd.DataFrame]:
    """Read and check an export directory before anything is written."""
    manifest_path = source / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{source} has no manifest.json; give a directory written by "
                         f"`perftune db export`")
    manifest = json.loads(manifest_path.read_text())
    version = int(manifest.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise StoreError(f"{source} was exported with schema version {version}, newer than "
                         f"this perftune understands ({SCHEMA_VERSION}); upgrade perftune")
    frames: dict[str, pd.DataFrame] = {}
    for table in ("devices", "campaigns", "measurements"):
        path = source / f"{table}.parquet"
        if not path.is_file():
            raise StoreError(f"{source} lacks {table}.parquet; the export is incomplete")
        frame = pd.read_parquet(path)
        missing = {c for c, t in TABLES[table].items() if "NOT NULL" in t or "PRIMARY" in t}
        missing -= set(frame.columns)
        if missing:
            raise StoreError(f"{path} lacks required columns {sorted(missing)}")
        frames[table] = frame
    return frames


def _filters(**filters: str | None) -> tuple[str, list[str]]:
    columns = {"device": "device_id", "family": "family", "status": "status"}
    clauses = [(f"{columns[name]} = ?", value) for name, value in filters.items() if value]
    if not clauses:
        return "", []
    return "WHERE " + " AND ".join(c for c, _ in clauses), [v for _, v in clauses]


def compact_store(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Rewrite the store at ``path`` without the free blocks that updated and replaced rows
    leave behind (DuckDB reuses them but never gives them back: the H100 store grew from 16
    to 26 MB over six merges of re-measured rows). The copy replaces the original only once
    it is complete and holds as many rows per table, so a crash leaves the original as it
    was. Returns the file's size in bytes before and after."""
    source = Path(path)
    if not source.is_file():
        raise StoreError(f"no store at {source}")
    with Store(source):  # a perftune store; its write-ahead log checkpointed on close
        pass
    copy = source.with_name(source.name + ".compacting")
    copy.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{copy}' AS dst")
        con.execute("COPY FROM DATABASE src TO dst")
        tables = con.execute("SELECT table_name FROM duckdb_tables() "
                             "WHERE database_name = 'src'").fetchall()
        for (table,) in tables:
            if _count(con, f"src.{table}") != _count(con, f"dst.{table}"):
                raise StoreError(f"compacting {source}: the copy of {table} lost rows; the "
                                 f"store is left as it was")
        con.execute("DETACH dst")
    except BaseException:
        con.close()
        copy.unlink(missing_ok=True)
        raise
    con.close()
    before = source.stat().st_size
    os.replace(copy, source)
    return before, source.stat().st_size


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _looks_like_duckdb(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True  # an empty file: DuckDB initialises it
    with path.open("rb") as handle:
        header = handle.read(16)
    return header[8:12] == b"DUCK"
