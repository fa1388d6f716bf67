"""The store's read queries, family-aware: the SQL every layer above needs, in one place.

Each takes the family it reads (no reader assumes GEMM) and returns a pandas frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from perftune.store.db import Store
from perftune.store.rules import BUSY_SQL, VERIFIED_SQL


def measurements_with_devices(store: Store, *, family: str, device_columns: Sequence[str],
                              device: str | None = None, status: str = "ok") -> pd.DataFrame:
    """Measurements of ``family`` on GPUs, each with its device's ``device_columns`` and power
    limit, in key order; only verified ones (not sent by clients)."""
    where = ["m.family = ?", "m.status = ?", "d.kind = 'gpu'", VERIFIED_SQL.format("m")]
    params: list[object] = [family, status]
    if device:
        where.append("m.device_id = ?")
        params.append(device)
    columns = ", ".join(f"d.{c}" for c in device_columns)
    return store.query(
        f"SELECT m.*, {columns}, d.power_limit_w FROM measurements m "
        "JOIN devices d USING (device_id) "
        f"WHERE {' AND '.join(where)} ORDER BY m.key", params)


def gpu_devices(store: Store, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The GPUs the store knows (``columns`` of them beside device_id, or all)."""
    selected = "device_id, " + ", ".join(columns) if columns else "*"
    return store.query(f"SELECT {selected} FROM devices WHERE kind = 'gpu'")


def known_configs(store: Store, *, family: str) -> pd.DataFrame:
    """Every (dataflow, config) of ``family`` measured ok on any device."""
    return store.query("SELECT DISTINCT dataflow, config FROM measurements WHERE family = ? "
                       "AND status = 'ok' ORDER BY dataflow, config", [family])


def problem_measurements(store: Store, *, family: str, device: str, shape: str,
                         dtype: str) -> pd.DataFrame:
    """Every verified measurement of one problem on one device (what a replay answers)."""
    return store.query(
        "SELECT dataflow, config, status, runtime_ms, energy_per_call_j, avg_power_w, "
        "energy_method, energy_window_s FROM measurements m WHERE family = ? AND "
        f"device_id = ? AND shape = ? AND dtype = ? AND {VERIFIED_SQL.format('m')}",
        [family, device, shape, dtype])


def has_trusted_energy(store: Store, family: str | None = None) -> bool:
    """Whether any row's energy (of ``family``, or of any) was measured with the GPU kept busy
    (perftune.store.rules)."""
    where, params = (" AND family = ?", [family]) if family else ("", [])
    return bool(store.query(f"SELECT count(*) AS n FROM measurements WHERE {BUSY_SQL}{where}",
                            params)["n"][0] > 0)


def measured_rows(store: Store, *, family: str | None = None, device: str | None = None,
                  dtype: str | None = None, shape: str | None = None) -> pd.DataFrame:
    """Ok rows with a runtime, to answer from: family, device_id, dtype, shape, dataflow,
    config, runtime_ms, timer (client rows included: who made a row is the reader's to say),
    and the power and energy only where trusted (:data:`BUSY_SQL`). All families, devices,
    dtypes and shapes, or those given."""
    where = ["status = 'ok'", "runtime_ms > 0"]
    params: list[object] = []
    for column, value in (("family", family), ("device_id", device), ("dtype", dtype),
                          ("shape", shape)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return store.query(
        "SELECT family, device_id, dtype, shape, dataflow, config, runtime_ms, timer, "
        f"CASE WHEN {BUSY_SQL} THEN avg_power_w END AS avg_power_w, "
        f"CASE WHEN {BUSY_SQL} THEN energy_per_call_j END AS energy_per_call_j "
        f"FROM measurements WHERE {' AND '.join(where)}", params)


def measurement_counts(store: Store) -> dict[str, int]:
    """Rows stored per device (any family, any status)."""
    frame = store.query("SELECT device_id, count(*) AS n FROM measurements GROUP BY ALL")
    return dict(zip(frame["device_id"], frame["n"].astype(int), strict=True))


def trainable_families(store: Store) -> set[str]:
    """Families with verified ok rows on a GPU: what a model can be trained on."""
    frame = store.query(
        "SELECT DISTINCT m.family FROM measurements m JOIN devices d USING (device_id) "
        f"WHERE m.status = 'ok' AND d.kind = 'gpu' AND {VERIFIED_SQL.format('m')}")
    return set(frame["family"])


def snapshot(store: Store) -> str:
    """A line naming the store's contents: rows and the latest measurement."""
    frame = store.query("SELECT count(*) AS n, max(measured_at) AS last FROM measurements")
    return f"{store.path.name}: {int(frame['n'][0])} rows up to {frame['last'][0]}"


# -- for notebooks (perftune.analysis) ---------------------------------------------------------
# Every reader below takes its filters as keyword arguments (None: all) and reads only rows
# perftune measured itself on a GPU, unless it says otherwise.

_PEAK_SQL = ("CASE WHEN m.dtype = 'bf16' THEN d.peak_tflops_bf16 ELSE d.peak_tflops_fp16 END")


def _filters(alias: str, **values: object) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    for column, value in values.items():
        if value is not None:
            where.append(f"{alias}.{column} = ?")
            params.append(value)
    return where, params


def filtered_measurements(store: Store, *, family: str | None = None,
                          device: str | None = None, dtype: str | None = None,
                          dataflow: str | None = None, shape: str | None = None,
                          status: str | None = None) -> pd.DataFrame:
    """Stored measurements (any timer, any status unless ``status``), filtered, in key
    order: the columns of the measurements table."""
    where, params = _filters("m", family=family, device_id=device, dtype=dtype,
                             dataflow=dataflow, shape=shape, status=status)
    return store.query("SELECT m.* FROM measurements m"
                       + (f" WHERE {' AND '.join(where)}" if where else "")
                       + " ORDER BY m.key", params)


def best_per_problem(store: Store, *, library: dict[str, str | None],
                     family: str | None = None, device: str | None = None) -> pd.DataFrame:
    """The fastest ok row per (family, device, dtype, shape), with the runtime of the
    family's library dataflow (``library``: family -> dataflow) on the same problem."""
    where, params = _filters("m", family=family, device_id=device)
    where += ["m.status = 'ok'", "m.runtime_ms > 0", "d.kind = 'gpu'", VERIFIED_SQL.format("m")]
    pairs = [(f, lib) for f, lib in library.items() if lib]
    values = ", ".join("(?, ?)" for _ in pairs) or "(NULL, NULL)"
    lib_params: list[object] = [v for pair in pairs for v in pair]
    return store.query(
        "WITH ok AS (SELECT m.family, m.device_id, m.dtype, m.shape, m.sizes, m.dataflow, "
        "m.config, m.runtime_ms FROM measurements m JOIN devices d USING (device_id) "
        f"WHERE {' AND '.join(where)}), "
        f"lib(family, dataflow) AS (VALUES {values}), "
        "best AS (SELECT * FROM ok QUALIFY row_number() OVER (PARTITION BY family, device_id, "
        "dtype, shape ORDER BY runtime_ms, dataflow, config) = 1), "
        "library AS (SELECT ok.family, device_id, dtype, shape, min(runtime_ms) AS library_ms "
        "FROM ok JOIN lib ON ok.family = lib.family AND ok.dataflow = lib.dataflow GROUP BY ALL) "
        "SELECT best.*, library.library_ms FROM best LEFT JOIN library "
        "USING (family, device_id, dtype, shape) "
        "ORDER BY family, device_id, dtype, shape", params + lib_params)


def best_per_dataflow(store: Store, *, family: str, device: str | None = None,
                      shape: str | None = None, dtype: str | None = None) -> pd.DataFrame:
    """The fastest ok row per (device, dtype, shape, dataflow) of ``family``: device_id,
    dtype, shape, sizes, dataflow, config, runtime_ms."""
    where, params = _filters("m", family=family, device_id=device, shape=shape, dtype=dtype)
    where += ["m.status = 'ok'", "m.runtime_ms > 0", "d.kind = 'gpu'", VERIFIED_SQL.format("m")]
    return store.query(
        "SELECT m.device_id, m.dtype, m.shape, m.sizes, m.dataflow, m.config, m.runtime_ms "
        "FROM measurements m JOIN devices d USING (device_id) "
        f"WHERE {' AND '.join(where)} QUALIFY row_number() OVER (PARTITION BY m.device_id, "
        "m.dtype, m.shape, m.dataflow ORDER BY m.runtime_ms, m.config) = 1 "
        "ORDER BY m.device_id, m.dtype, m.shape, m.dataflow", params)


def roofline_rows(store: Store, *, family: str | None = None,
                  device: str | None = None) -> pd.DataFrame:
    """Ok rows with FLOPs, bytes and runtime, beside their device's measured ceilings:
    peak_tflops (of the row's dtype) and copy_bandwidth_gbs."""
    where, params = _filters("m", family=family, device_id=device)
    where += ["m.status = 'ok'", "m.runtime_ms > 0", "m.flops > 0", "m.bytes > 0",
              "d.kind = 'gpu'", VERIFIED_SQL.format("m")]
    return store.query(
        "SELECT m.family, m.device_id, m.dtype, m.shape, m.dataflow, m.config, m.runtime_ms, "
        f"m.flops, m.bytes, {_PEAK_SQL} AS peak_tflops, d.copy_bandwidth_gbs "
        "FROM measurements m JOIN devices d USING (device_id) "
        f"WHERE {' AND '.join(where)} ORDER BY m.key", params)


def trusted_energy_rows(store: Store, *, family: str, device: str | None = None,
                        shape: str | None = None, dtype: str | None = None) -> pd.DataFrame:
    """Ok rows whose energy was measured with the GPU kept busy (:data:`BUSY_SQL`): device_id,
    dtype, shape, dataflow, config, runtime_ms, avg_power_w, energy_per_call_j,
    energy_method."""
    where, params = _filters("m", family=family, device_id=device, shape=shape, dtype=dtype)
    where += ["m.status = 'ok'", "m.runtime_ms > 0", "m.energy_per_call_j > 0",
              BUSY_SQL, VERIFIED_SQL.format("m")]
    return store.query(
        "SELECT m.device_id, m.dtype, m.shape, m.dataflow, m.config, m.runtime_ms, "
        "m.avg_power_w, m.energy_per_call_j, m.energy_method FROM measurements m "
        f"WHERE {' AND '.join(where)} ORDER BY m.runtime_ms", params)


def energy_problems(store: Store, *, family: str, device: str | None = None) -> pd.DataFrame:
    """Problems of ``family`` with trusted energy rows: device_id, dtype, shape, rows; most
    rows first."""
    where, params = _filters("m", family=family, device_id=device)
    where += ["m.status = 'ok'", "m.energy_per_call_j > 0", BUSY_SQL, VERIFIED_SQL.format("m")]
    return store.query(
        "SELECT m.device_id, m.dtype, m.shape, count(*) AS rows FROM measurements m "
        f"WHERE {' AND '.join(where)} GROUP BY ALL ORDER BY rows DESC, m.device_id, m.dtype, "
        "m.shape", params)


def problem_counts(store: Store, *, family: str, device: str | None = None) -> pd.DataFrame:
    """Problems of ``family`` per device with their ok rows: device_id, dtype, shape, sizes,
    rows, dataflows (distinct); most rows first."""
    where, params = _filters("m", family=family, device_id=device)
    where += ["m.status = 'ok'", "m.runtime_ms > 0", VERIFIED_SQL.format("m")]
    return store.query(
        "SELECT m.device_id, m.dtype, m.shape, any_value(m.sizes) AS sizes, count(*) AS rows, "
        "count(DISTINCT m.dataflow) AS dataflows FROM measurements m "
        f"WHERE {' AND '.join(where)} GROUP BY m.device_id, m.dtype, m.shape "
        "ORDER BY rows DESC, m.device_id, m.dtype, m.shape", params)
