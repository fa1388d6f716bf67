"""The store's read queries, family-aware: the SQL every layer above needs, in one place.

Each takes the family it reads (no reader assumes GEMM) and returns a pandas frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from perftune.store.db import Store
from perftune.store.rules import BUSY_SQL


def measurements_with_devices(store: Store, *, family: str, device_columns: Sequence[str],
                              device: str | None = None, status: str = "ok") -> pd.DataFrame:
    """Measurements of ``family`` on GPUs, each with its device's ``device_columns`` and power
    limit, in key order."""
    where = ["m.family = ?", "m.status = ?", "d.kind = 'gpu'"]
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
    """Every recorded measurement of one problem on one device (what a replay answers)."""
    return store.query(
        "SELECT dataflow, config, status, runtime_ms, energy_per_call_j, avg_power_w, "
        "energy_method, energy_window_s FROM measurements WHERE family = ? AND "
        "device_id = ? AND shape = ? AND dtype = ?", [family, device, shape, dtype])


def has_trusted_energy(store: Store) -> bool:
    """Whether any row's energy was measured with the GPU kept busy (perftune.store.rules)."""
    return bool(store.query(f"SELECT count(*) AS n FROM measurements WHERE {BUSY_SQL}")
                ["n"][0] > 0)


def snapshot(store: Store) -> str:
    """A line naming the store's contents: rows and the latest measurement."""
    frame = store.query("SELECT count(*) AS n, max(measured_at) AS last FROM measurements")
    return f"{store.path.name}: {int(frame['n'][0])} rows up to {frame['last'][0]}"
