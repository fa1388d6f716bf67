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

from perftune.errors import StoreError, StoreNeedsMigrating
from perftune.settings import default_db_path
from perftune.store.schema import (
    CAMPAIGN_STATUSES,
    MEASUREMENT_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    sizes_from_shape,
)

_META = "perftune_meta"
_KEYS = {"devices": "device_id", "campaigns": "campaign_id", "measurements": "key",
         "autotune_measurements": "key", "autotune_choices": "key",
         "campaign_runs": "run_id", "campaign_events": "key", "tune_jobs": "job_id"}

# Campaigns this process has started and not finished. DuckDB lets one process write a store
# at a time, so a `running` campaign that a writer finds and did not start is dead: its process
# was killed before it could close it.
_OWN_CAMPAIGNS: set[str] = set()


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
        self.recovered = 0  # dead `running` campaigns this opening marked interrupted
        self._con = self._connect()
        try:
            with self._guard():
                self._check_and_migrate()
                if not read_only:
                    self.recovered = self._close_dead_campaigns()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
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
            raise StoreError(f"cannot open {self.path}: {_one_line(exc)}") from None

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """DuckDB's errors about a damaged file (a block that fails its checksum, a file
        shorter than its blocks) as one StoreError naming the file."""
        try:
            yield
        except duckdb.Error as exc:
            if not _is_damage(exc):
                raise
            raise StoreError(f"{self.path} is damaged ({_one_line(exc)}); restore it from a "
                             f"copy, or rebuild it with `perftune db init` and "
                             f"`perftune db import`") from None

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
                raise StoreNeedsMigrating(
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
        if not rows:
            return None
        try:
            return int(rows[0][0])
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: {_META} gives schema_version {rows[0][0]!r}, not a "
                             f"number; the file is not a store this perftune can read") from None

    def _close_dead_campaigns(self) -> int:
        """Mark ``running`` campaigns that no live process owns as interrupted, finished when
        they last stored a row (else when they started; a row an energy-only run moved to
        its campaign keeps the older date of its timing), with the rows they wrote. Returns
        how many there were."""
        running = [r[0] for r in self._con.execute(
            "SELECT campaign_id FROM campaigns WHERE status = 'running'").fetchall()]
        dead = [c for c in running if c not in _OWN_CAMPAIGNS]
        if not dead:
            return 0
        with self._transaction(), self._registered("_dead", pd.DataFrame({"id": dead})):
            self._con.execute("""
                UPDATE campaigns AS c SET status = 'interrupted',
                    finished_at = coalesce(c.finished_at, greatest(c.started_at, w.last)),
                    written = coalesce(c.written, w.n, 0)
                FROM (SELECT d.id, max(m.measured_at) AS last, count(m.key) AS n
                      FROM _dead d LEFT JOIN measurements m ON m.campaign_id = d.id
                      GROUP BY d.id) AS w
                WHERE c.campaign_id = w.id AND c.status = 'running'""")
            self._con.execute("""
                UPDATE campaign_runs SET status = 'interrupted',
                    finished_at = coalesce(finished_at, ?)
                WHERE status = 'running' AND run_id IN (SELECT run_id FROM campaigns
                    WHERE campaign_id IN (SELECT id FROM _dead))""", [now()])
        return len(dead)

    def _migrate(self, version: int) -> None:
        con = self._con
        with self._transaction():
            if version == 0:
                con.execute(f"CREATE TABLE {_META} (name VARCHAR PRIMARY KEY, value VARCHAR)")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    con.execute(statement)
            con.execute(f"INSERT OR REPLACE INTO {_META} VALUES ('schema_version', ?)",
                        [str(SCHEMA_VERSION)])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction around the block: committed if it ends normally, else rolled back."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

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
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if frame.empty:
            return 0
        with self._guard(), self._transaction():
            return self._insert_frame(table, frame)

    def _insert_frame(self, table: str, frame: pd.DataFrame) -> int:
        """The rows of ``frame`` whose key is new, inserted in the open transaction."""
        columns = TABLES[table]
        if frame.empty:
            return 0
        unknown = set(frame.columns) - set(columns)
        if unknown:
            raise StoreError(f"unknown {table} columns: {sorted(unknown)}")
        frame = frame.reindex(columns=list(columns))
        frame = frame.drop_duplicates(subset=[_KEYS[table]])
        con = self._con
        with self._registered("_incoming", frame):
            before = _count(con, table)
            casts = ", ".join(_cast(table, c, columns[c]) for c in columns)
            con.execute(f"INSERT OR IGNORE INTO {table} SELECT {casts} FROM _incoming")
            return _count(con, table) - before

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
        with self._guard(), self._transaction():
            for key, values in updates.items():
                unknown = set(values) - set(columns)
                if unknown or "key" in values:
                    raise StoreError(f"cannot update measurement columns {sorted(unknown)}")
                assignments = ", ".join(f"{name} = ?" for name in values)
                rows = con.execute(f"UPDATE measurements SET {assignments} WHERE key = ? "
                                   f"RETURNING key", [*values.values(), key]).fetchall()
                updated += len(rows)
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
        with self._guard(), self._registered("_wanted", frame):
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
            with self._guard():
                self._con.execute(f"UPDATE devices SET {assignments} WHERE device_id = ?",
                                  [*updates.values(), row["device_id"]])

    def start_campaign(self, campaign: Mapping[str, Any]) -> None:
        """Store a ``running`` campaign, owned by this process until it is finished."""
        _OWN_CAMPAIGNS.add(str(campaign["campaign_id"]))
        self.insert("campaigns", [{"status": "running", "started_at": now(), **campaign}])

    def finish_campaign(self, campaign_id: str, *, status: str, written: int) -> None:
        """Close a running campaign as ``finished`` or ``interrupted``; a campaign that is not
        running (closed already, or never stored) is left as it is."""
        self._require_writable()
        if status not in CAMPAIGN_STATUSES or status == "running":
            raise ValueError(f"a campaign finishes as finished or interrupted, not {status!r}")
        with self._guard():
            self._con.execute(
                "UPDATE campaigns SET status = ?, finished_at = ?, written = ? "
                "WHERE campaign_id = ? AND status = 'running'",
                [status, now(), written, campaign_id])
        _OWN_CAMPAIGNS.discard(campaign_id)

    # -- campaigns on a cluster ----------------------------------------------------------------
    def start_run(self, run: Mapping[str, Any]) -> None:
        """Store a ``running`` cluster campaign (perftune.collect.campaign)."""
        self.insert("campaign_runs", [{"status": "running", "started_at": now(), **run}])

    def reopen_run(self, run_id: str) -> None:
        """A stopped cluster campaign running again (``perftune campaign resume``), with its
        device and family campaigns, owned by this process."""
        self._require_writable()
        with self._guard(), self._transaction():
            self._con.execute("UPDATE campaign_runs SET status = 'running', finished_at = NULL "
                              "WHERE run_id = ?", [run_id])
            ids = [r[0] for r in self._con.execute(
                "UPDATE campaigns SET status = 'running', finished_at = NULL WHERE run_id = ? "
                "RETURNING campaign_id", [run_id]).fetchall()]
        _OWN_CAMPAIGNS.update(ids)

    def set_campaign_planned(self, campaign_id: str, planned: int) -> None:
        self._require_writable()
        with self._guard():
            self._con.execute("UPDATE campaigns SET planned = ? WHERE campaign_id = ?",
                              [planned, campaign_id])

    def finish_run(self, run_id: str, *, status: str) -> None:
        """Close a cluster campaign and its running device and family campaigns, each with
        the rows it holds."""
        if status not in CAMPAIGN_STATUSES or status == "running":
            raise ValueError(f"a campaign finishes as finished or interrupted, not {status!r}")
        written = self.query("SELECT c.campaign_id, count(m.key) AS n FROM campaigns c LEFT "
                             "JOIN measurements m USING (campaign_id) WHERE c.run_id = ? "
                             "AND c.status = 'running' GROUP BY ALL", [run_id])
        for campaign_id, count in written.itertuples(index=False):
            self.finish_campaign(campaign_id, status=status, written=int(count))
        with self._guard():
            self._con.execute("UPDATE campaign_runs SET status = ?, finished_at = ? "
                              "WHERE run_id = ? AND status = 'running'", [status, now(), run_id])

    def add_event(self, run_id: str, event: str, *, worker: str | None = None,
                  device_id: str | None = None, detail: str | None = None) -> None:
        """Record what happened to a cluster campaign (a lost worker, a failed chunk...)."""
        count = self.query("SELECT count(*) AS n FROM campaign_events WHERE run_id = ?",
                           [run_id])["n"].iloc[0]
        self.insert("campaign_events", [{
            "key": f"{run_id}:{int(count) + 1:06d}", "run_id": run_id, "happened_at": now(),
            "event": event, "worker": worker, "device_id": device_id, "detail": detail}])

    # -- reading ------------------------------------------------------------------------------
    def device(self, device_id: str) -> dict[str, Any] | None:
        frame = self.query("SELECT * FROM devices WHERE device_id = ?", [device_id])
        return None if frame.empty else frame.iloc[0].to_dict()

    def existing_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of these measurement keys are already stored."""
        rows = self._of_keys(keys, "SELECT m.key FROM measurements m JOIN _wanted w USING (key)")
        return {r[0] for r in rows}

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        with self._guard():
            return self._con.execute(sql, params or []).fetchdf()

    def verify(self) -> None:
        """Read every stored value once. DuckDB checks each block's checksum as it reads it,
        and fails on a block past the end of a file cut short, so a damaged file raises
        StoreError naming it."""
        con = self._con
        with self._guard():
            for table in sorted(self._tables()):
                names = [r[0] for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "'main' AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()]
                columns = ", ".join(f'"{name}"' for name in names)
                con.execute(f'SELECT count(*), bit_xor(hash({columns})) FROM "{table}"'
                            ).fetchall()

    def campaigns(self) -> pd.DataFrame:
        """Every campaign, newest first, with its duration in seconds: NULL where it has no
        finished_at (still running, or interrupted without one, as some shipped campaigns
        are)."""
        return self.query("""
            SELECT campaign_id, device_id, family, status, started_at, finished_at,
                   CASE WHEN finished_at IS NULL THEN NULL
                        ELSE epoch(finished_at) - epoch(started_at) END AS duration_s,
                   planned, written, host, command
            FROM campaigns ORDER BY started_at DESC, campaign_id""")

    def campaign_counts(self) -> pd.DataFrame:
        """Campaigns per device and status, with the rows they wrote and their total time
        (campaigns without finished_at count, their time does not)."""
        return self.query("""
            SELECT device_id, status, count(*) AS campaigns,
                   coalesce(sum(written), 0) AS written,
                   count(finished_at) AS with_finished_at,
                   round(coalesce(sum(epoch(finished_at) - epoch(started_at)), 0), 1)
                       AS seconds
            FROM campaigns GROUP BY ALL ORDER BY ALL""")

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
        replaced by it (``refreshed``). Every file is checked first (:func:`read_export`),
        then every table is written in one transaction: a bad export changes nothing."""
        return self.import_frames(read_export(Path(directory)))

    def import_frames(self, frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
        """Tables read by :func:`read_export`, written in one transaction."""
        self._require_writable()
        counts: dict[str, int] = {}
        try:
            with self._guard(), self._transaction():
                for table in ("devices", "campaigns", "measurements"):
                    counts[table] = self._insert_frame(table, frames[table])
                counts["refreshed"] = self._refresh_measurements(frames["measurements"])
        except duckdb.Error as exc:
            raise StoreError(f"importing into {self.path} failed, nothing was written: "
                             f"{_one_line(exc)}") from None
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


EXPORT_TABLES = ("devices", "campaigns", "measurements")
# Measured quantities: a stored value is finite and not negative.
_MEASURED = ("runtime_ms", "runtime_min_ms", "runtime_max_ms", "runtime_spread", "reps",
             "rounds", "flops", "bytes", "tflops", "gbps", "avg_power_w", "energy_per_call_j",
             "energy_window_s")
_STATUS_SETS = {"measurements": MEASUREMENT_STATUSES, "campaigns": CAMPAIGN_STATUSES}


def read_export(source: Path) -> dict[str, pd.DataFrame]:
    """Read and check an export directory before anything is written: the manifest (a JSON
    object with this perftune's schema version or an older one, and row counts that match
    the files), then each table's file (readable Parquet, no unknown columns, each column of
    its type, no NULL or repeated key, no NULL where the schema forbids it, statuses from the
    known set, measured quantities finite and not negative). The first fault raises one
    StoreError naming the file and the field."""
    manifest = _read_manifest(source)
    frames: dict[str, pd.DataFrame] = {}
    for table in EXPORT_TABLES:
        path = source / f"{table}.parquet"
        if not path.is_file():
            raise StoreError(f"{source} lacks {table}.parquet; the export is incomplete")
        frames[table] = _read_table(path, table)
    rows = manifest.get("rows")
    if rows is not None:
        if not isinstance(rows, dict):
            raise StoreError(f"{source / 'manifest.json'}: 'rows' must be an object of row "
                             f"counts per table, not {type(rows).__name__}")
        for table, count in rows.items():
            if table not in frames:
                raise StoreError(f"{source / 'manifest.json'}: 'rows' names an unknown table "
                                 f"{table!r}")
            if isinstance(count, bool) or not isinstance(count, int) \
                    or count != len(frames[table]):
                raise StoreError(f"{source / 'manifest.json'}: rows.{table} is {count!r} but "
                                 f"{table}.parquet holds {len(frames[table])} rows")
    return frames


def _read_manifest(source: Path) -> dict[str, Any]:
    path = source / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{source} has no manifest.json; give a directory written by "
                         f"`perftune db export`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _one_line(exc)
        raise StoreError(f"{path} is not valid JSON ({reason})") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path} must hold a JSON object, not a {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreError(f"{path}: schema_version must be a whole number, not {version!r}")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{source} was exported with schema version {version}, newer than "
                         f"this perftune understands ({SCHEMA_VERSION}); upgrade perftune")
    if version < 1:
        raise StoreError(f"{path}: schema_version {version} is not a perftune schema version "
                         f"(1 to {SCHEMA_VERSION})")
    return manifest


def _read_table(path: Path, table: str) -> pd.DataFrame:
    """One exported table, checked (see :func:`read_export`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"{path} is not a readable Parquet file ({_one_line(exc)})") from None
    columns = TABLES[table]
    unknown = [c for c in data.column_names if c not in columns]
    if unknown:
        raise StoreError(f"{path}: unknown columns {unknown}; {table} has "
                         f"{', '.join(columns)}")
    if len(set(data.column_names)) != len(data.column_names):
        raise StoreError(f"{path}: a column appears twice")
    required = [c for c, sql in columns.items() if "NOT NULL" in sql or "PRIMARY" in sql]
    missing = [c for c in required if c not in data.column_names]
    if missing:
        raise StoreError(f"{path} lacks required columns {missing}")
    for name in data.column_names:
        column = data.column(name)
        sql_type = columns[name].split()[0]
        if not _arrow_fits(column.type, sql_type):
            raise StoreError(f"{path}: column {name} is {column.type}, not {sql_type}")
        if name in required and column.null_count:
            raise StoreError(f"{path}: column {name} has {column.null_count} NULL values; it "
                             f"must be set in every row")
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            raise StoreError(f"{path}: column {name} holds NaN; a missing value is NULL")
        if name in _MEASURED and len(column) > column.null_count:
            values = pc.cast(column, pa.float64())
            if not pc.all(pc.is_finite(pc.drop_null(values))).as_py():
                raise StoreError(f"{path}: column {name} holds an infinite value")
            if pc.min(values).as_py() < 0:
                raise StoreError(f"{path}: column {name} holds a negative value")
    if data.num_rows == 0:
        return data.to_pandas()
    key = _KEYS[table]
    if pc.count_distinct(data.column(key)).as_py() != data.num_rows:
        raise StoreError(f"{path}: column {key} repeats a key; each row must have its own")
    allowed = _STATUS_SETS.get(table)
    if allowed is not None:
        found = set(pc.unique(data.column("status")).to_pylist()) - set(allowed)
        if found:
            raise StoreError(f"{path}: column status holds {sorted(found)}; the known statuses "
                             f"are {', '.join(allowed)}")
    return data.to_pandas()


def _arrow_fits(arrow_type: Any, sql_type: str) -> bool:
    """Whether a Parquet column of ``arrow_type`` holds values of the store's ``sql_type``
    (an all-NULL column fits any type)."""
    import pyarrow as pa

    types = pa.types
    if types.is_null(arrow_type):
        return True
    if types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if sql_type == "VARCHAR":
        return bool(types.is_string(arrow_type) or types.is_large_string(arrow_type)
                    or getattr(types, "is_string_view", lambda _: False)(arrow_type))
    if sql_type in ("BIGINT", "INTEGER"):
        return bool(types.is_integer(arrow_type))
    if sql_type == "DOUBLE":
        return bool(types.is_floating(arrow_type) or types.is_integer(arrow_type))
    if sql_type == "TIMESTAMP":
        return bool(types.is_timestamp(arrow_type))
    return False


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
    except BaseException as exc:
        con.close()
        copy.unlink(missing_ok=True)
        if isinstance(exc, duckdb.Error) and _is_damage(exc):
            raise StoreError(f"{source} is damaged ({_one_line(exc)}); it is left as it "
                             f"was") from None
        raise
    con.close()
    before = source.stat().st_size
    os.replace(copy, source)
    return before, source.stat().st_size


def _cast(table: str, column: str, sql_type: str) -> str:
    """The SELECT expression inserting ``column``: cast to its type, and a measurement's
    sizes derived from its shape where the row has none."""
    cast = f"CAST({column} AS {sql_type.split()[0]})"
    if table == "measurements" and column == "sizes":
        cast = f"coalesce({cast}, {sizes_from_shape('shape')})"
    return f"{cast} AS {column}"


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (DuckDB's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_damage(exc: duckdb.Error) -> bool:
    """Whether DuckDB's error says the file is damaged rather than the query wrong."""
    text = str(exc)
    return (isinstance(exc, (duckdb.IOException, duckdb.InternalException,
                             duckdb.FatalException, duckdb.SerializationException))
            or "Corrupt database" in text or "database has been invalidated" in text)


def _looks_like_duckdb(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True  # an empty file: DuckDB initialises it
    with path.open("rb") as handle:
        header = handle.read(16)
    return header[8:12] == b"DUCK"
