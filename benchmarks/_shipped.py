"""The benchmarks' data: the shipped dataset imported into a fresh store under /tmp."""

from __future__ import annotations

import datetime as dt
import platform
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.model.features import load_measurements
from perftune.store.dataset import build_store
from perftune.store.db import Store


def fresh_store(name: str) -> Path:
    """A store built from the shipped dataset at /tmp/perftune-<name>.duckdb (rebuilt every
    run)."""
    db = Path("/tmp") / f"perftune-{name}.duckdb"
    db.unlink(missing_ok=True)
    build_store(db)
    return db


def gemm_measurements(db: Path | None, name: str, *, device: str | None = None
                      ) -> pd.DataFrame:
    """The GEMM measurements (with device properties) of ``db``, or of a fresh store."""
    with Store(db or fresh_store(name), read_only=True) as store:
        return load_measurements(store, family="gemm", device=device)


def replay_header(module: str) -> dict[str, Any]:
    """A CPU replay benchmark's device, date and reproducing command."""
    return {"device": f"cpu ({platform.processor() or platform.machine()}); replay of the "
                      f"shipped GPU measurements",
            "date": dt.date.today().isoformat(),
            "command": " ".join([f"python -m benchmarks.{module}", *sys.argv[1:]])}
