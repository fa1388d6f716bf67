"""The ``autotune`` decorator's rows of one kernel in a store: read them, and write one key's
measurements and choice in one transaction. The decorator's local store and the service's
``/v1/autotune/records`` both go through here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from perftune.store.db import Store

IDENTITY = ("kernel", "source_hash", "device_id", "software_key")
_WHERE = " AND ".join(f"{name} = ?" for name in IDENTITY)


def read_records(store: Store, identity: Mapping[str, str]
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kernel's choices and measurements (one kernel source, device and software)."""
    params = [identity[name] for name in IDENTITY]
    choices = store.query(f"SELECT * FROM autotune_choices WHERE {_WHERE}", params)
    measured = store.query(f"SELECT * FROM autotune_measurements WHERE {_WHERE}", params)
    return choices, measured


def write_records(store: Store, identity: Mapping[str, str],
                  measurements: Sequence[Mapping[str, Any]], choice: Mapping[str, Any],
                  at: dt.datetime) -> dict[str, Any] | None:
    """Store a key's measurements and its choice in one transaction; the stored choice is
    returned: this one, or the one stored first for the same key (never two)."""
    base = {name: identity[name] for name in IDENTITY}
    rows = [{**row, **base, "measured_at": at} for row in measurements]
    chosen = {**choice, **base, "chosen_at": at}
    with store._guard(), store._transaction():
        if rows:
            store._insert_frame("autotune_measurements", pd.DataFrame(rows))
        store._insert_frame("autotune_choices", pd.DataFrame([chosen]))
    stored = store.query("SELECT * FROM autotune_choices WHERE key = ?", [chosen["key"]])
    return dict(stored.to_dict("records")[0]) if len(stored) else None
