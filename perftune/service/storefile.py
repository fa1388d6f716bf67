"""Opening the store from the service without needing the writer's lock.

DuckDB lets one process write a file, and while it does, no other process can open the file
at all, not even read-only. The service reads everything it answers from into memory at start
(:func:`reading`): when a writer (``perftune collect``, an import) holds the store, it reads a
copy of the file and its write-ahead log from a temporary directory instead, and says so. An
ingest that finds the store held answers 503 with Retry-After (:func:`is_locked`).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from perftune.errors import StoreError
from perftune.store.db import Store

log = logging.getLogger("perftune.service")
COPY_ATTEMPTS = 3  # a copy taken while the writer checkpoints may not open: copy again


def is_locked(exc: BaseException) -> bool:
    """Whether opening the store failed because another process holds its lock (DuckDB's
    IO error, raised as is or as the StoreError that names the file)."""
    if not isinstance(exc, StoreError | duckdb.IOException):
        return False
    text = f"{exc} {exc.__cause__ or ''}"
    return "Could not set lock" in text or "Conflicting lock" in text


def holder(exc: BaseException) -> str:
    """Who holds the lock, as DuckDB names it ('.../python3.11 (PID 1234)'), if it does."""
    found = re.search(r"lock is held in (.+?\(PID \d+\))", f"{exc} {exc.__cause__ or ''}")
    return found.group(1) if found else "another process"


@contextmanager
def reading(db: Path, announce: Callable[[str], object] = log.warning) -> Iterator[Store]:
    """The store at ``db`` opened read-only; while a writer holds it, a copy of it."""
    try:
        store = Store(db, read_only=True)
    except StoreError as exc:
        if not is_locked(exc):
            raise
        locked = exc
    else:
        with store:
            yield store
        return
    announce(f"{db} is open for writing by {holder(locked)}: reading a copy of it as it is "
             f"now (rows the writer adds later are read at the next start); ingest answers "
             f"503 until the writer is done")
    with tempfile.TemporaryDirectory(prefix="perftune-read-") as tmp, \
            _copy(db, Path(tmp), locked) as copy:
        yield copy


def _copy(db: Path, directory: Path, locked: StoreError) -> Store:
    target = directory / db.name
    wal = db.with_name(db.name + ".wal")
    failure: StoreError | None = None
    for attempt in range(COPY_ATTEMPTS):
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
        shutil.copyfile(db, target)
        # The log holds committed rows not yet in the file; the last attempt goes without it
        # (the file alone is the last checkpoint, always whole).
        if wal.exists() and attempt < COPY_ATTEMPTS - 1:
            shutil.copyfile(wal, target.with_name(target.name + ".wal"))
        try:
            return Store(target, read_only=True)
        except StoreError as exc:
            failure = exc
            time.sleep(0.5)
    raise StoreError(f"{db} is open for writing by {holder(locked)} and a copy of it could not "
                     f"be read either ({failure}); start the service when the writer is "
                     f"done") from failure
