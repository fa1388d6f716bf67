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
