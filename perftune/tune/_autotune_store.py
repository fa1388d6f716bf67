"""The ``autotune`` decorator's persistent state: one kernel's measurements and choices in the
store's ``autotune_measurements`` and ``autotune_choices`` tables (schema version 4).

DuckDB lets one process write a file at a time, so every access opens the store, reads or
writes in one transaction and closes it again, under a file lock beside the store (processes
of this decorator queue there) and with a bounded retry when another program holds the store.
A store that cannot be used makes the decorator local-only, with one warning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.errors import StoreNeedsMigrating
from perftune.store.autotune_records import read_records, write_records

LOCK_WAIT_S = 30.0  # the longest one access waits for the store


@dataclass(frozen=True)
class KernelIdentity:
    """What a record holds for: a kernel's name and source, the device and the software."""

    kernel: str
    source_hash: str
    device_id: str
    software_key: str

    @property
    def fields(self) -> dict[str, str]:
        return {"kernel": self.kernel, "source_hash": self.source_hash,
                "device_id": self.device_id, "software_key": self.software_key}

    def digest(self, *parts: str) -> str:
        text = "|".join((self.kernel, self.source_hash, self.device_id, self.software_key,
                         *parts))
        return hashlib.sha1(text.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class AutotuneRecords:
    """Reads and writes one kernel's autotune rows; ``local_only`` once the store failed."""

    def __init__(self, db: str | os.PathLike[str] | None, identity: KernelIdentity):
        self.db = db
        self.identity = identity
        self.local_only = os.environ.get("PERFTUNE_AUTOTUNE_STORE", "") == "off"
        self.reads = 0
        self.writes = 0

    # -- access ---------------------------------------------------------------------------------
    def _path(self) -> Path:
        if self.db is not None:
            return Path(self.db)
        from perftune.settings import default_db_path
        from perftune.store.dataset import ensure_default_store

        ensure_default_store()  # never an empty default store in place of the shipped one
        return default_db_path()

    @contextlib.contextmanager
    def _store(self, *, write: bool) -> Iterator[Any]:
        from perftune.errors import StoreError
        from perftune.store.db import Store

        path = self._path()
        deadline = time.monotonic() + LOCK_WAIT_S
        with _file_lock(path.with_name(path.name + ".autotune.lock"), deadline):
            while True:
                try:
                    store = Store(path, read_only=not write)
                    break
                except StoreError as exc:
                    busy = "lock" in str(exc).lower()
                    if not busy or time.monotonic() > deadline:
                        raise
                    time.sleep(random.uniform(0.05, 0.25))
            try:
                yield store
            finally:
                store.close()

    def _fail(self, exc: BaseException) -> None:
        if not self.local_only:
            warnings.warn(f"perftune autotune: the store is unavailable ({_one_line(exc)}); "
                          f"tuning {self.identity.kernel} in this process only",
                          RuntimeWarning, stacklevel=4)
        self.local_only = True

    # -- reading --------------------------------------------------------------------------------
    def load(self) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
        """This kernel's choices (by choice key) and measurements, in one opening."""
        empty: tuple[dict[str, dict[str, Any]], pd.DataFrame] = ({}, pd.DataFrame())
        if self.local_only:
            return empty
        try:
            if not self._path().exists():
                return empty
            try:
                choices, measured = self._read(write=False)
            except StoreNeedsMigrating:  # an older store: opening it writable migrates it
                choices, measured = self._read(write=True)
        except Exception as exc:  # any failure means local-only, said once
            self._fail(exc)
            return empty
        return {row["key"]: row for row in choices.to_dict("records")}, measured

    def _read(self, *, write: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
        with self._store(write=write) as store:
            self.reads += 1
            return read_records(store, self.identity.fields)

    # -- writing --------------------------------------------------------------------------------
    def record(self, measurements: Sequence[Mapping[str, Any]], choice: Mapping[str, Any]
               ) -> dict[str, Any] | None:
        """Store a key's measurements and its choice in one transaction. Returns the stored
        choice: this one, or the one another process stored first (never two)."""
        if self.local_only:
            return None
        try:
            with self._store(write=True) as store:
                stored = write_records(store, self.identity.fields, measurements, choice,
                                       _now())
                self.writes += 1
        except Exception as exc:  # any failure means local-only, said once
            self._fail(exc)
            return None
        return stored


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (where the platform has ``fcntl``), waited for
    until ``deadline``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: DuckDB's own lock and the retry
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for {LOCK_WAIT_S:.0f} s"
                                       ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def canonical(obj: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(obj.items())), separators=(",", ":"), default=str)
