"""Tune jobs in the store: one problem of a family to measure on one device, queued by the
service and run by a worker of that device (``perftune worker``).

A job is ``queued``, then ``running`` once a worker claims it, then ``done`` (with the
worker's answer) or ``failed`` (with the error). There is at most one open (queued or
running) job per family, shape, dtype and device: asking again returns it. A running job whose
worker stopped heartbeating for longer than a lease is queued again (its worker is taken for
dead), and failed after :data:`MAX_ATTEMPTS` claims.

Every function takes a :class:`~perftune.store.db.Store` opened for writing (except
:func:`get`) and runs in one transaction; the caller keeps one writer at a time (DuckDB lets
one process write a file, and the service holds its write lock around each call).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import duckdb

from perftune.errors import StoreError
from perftune.store.db import Store, now
from perftune.store.schema import TUNE_JOB_COLUMNS

MAX_ATTEMPTS = 3  # claims before a job whose workers keep dying is failed
OPEN = ("queued", "running")
_COLUMNS = ", ".join(TUNE_JOB_COLUMNS)


@contextlib.contextmanager
def _transaction(store: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    if store.read_only:
        raise StoreError(f"{store.path} was opened read-only")
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in con.description or []]
    return [_decoded(dict(zip(names, row, strict=True))) for row in con.fetchall()]


def _decoded(job: dict[str, Any]) -> dict[str, Any]:
    for column in ("sizes", "result"):
        if isinstance(job.get(column), str):
            job[column] = json.loads(job[column])
    return job


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, Any] | None:
    con.execute(sql, params)
    rows = _rows(con)
    return rows[0] if rows else None


def get(store: Store, job_id: str) -> dict[str, Any] | None:
    """The job ``job_id`` as a dict of its columns (sizes and result decoded), or None."""
    return _one(store.con, f"SELECT {_COLUMNS} FROM tune_jobs WHERE job_id = ?", [job_id])


def open_jobs(store: Store) -> int:
    return int(store.con.execute("SELECT count(*) FROM tune_jobs WHERE status IN "
                                 "('queued', 'running')").fetchone()[0])  # type: ignore[index]


def shapes(store: Store, *, family: str, dtype: str, device_id: str) -> set[str]:
    """Shapes of the jobs ever queued for ``family`` and ``dtype`` on ``device_id``."""
    rows = store.con.execute("SELECT DISTINCT shape FROM tune_jobs WHERE family = ? AND "
                             "dtype = ? AND device_id = ?", [family, dtype, device_id])
    return {str(shape) for (shape,) in rows.fetchall()}


def enqueue(store: Store, *, family: str, shape: str, sizes: Mapping[str, int], dtype: str,
            device_id: str, budget: int) -> tuple[dict[str, Any], bool]:
    """Queue a job for the problem, or find the open one: (the job, whether it is new)."""
    with _transaction(store) as con:
        found = _one(con, f"SELECT {_COLUMNS} FROM tune_jobs WHERE family = ? AND shape = ? "
                     "AND dtype = ? AND device_id = ? AND status IN ('queued', 'running') "
                     "ORDER BY created_at LIMIT 1", [family, shape, dtype, device_id])
        if found is not None:
            return found, False
        job_id = uuid.uuid4().hex[:16]
        con.execute("INSERT INTO tune_jobs (job_id, family, shape, sizes, dtype, device_id, "
                    "budget, status, created_at, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, "
                    "'queued', ?, 0)", [job_id, family, shape, json.dumps(dict(sizes)), dtype,
                                        device_id, budget, now()])
    job = get(store, job_id)
    assert job is not None
    return job, True


def claim(store: Store, device_id: str, worker: str) -> dict[str, Any] | None:
    """The oldest queued job of ``device_id``, now running for ``worker``; None if none."""
    at = now()
    with _transaction(store) as con:
        return _one(con, "UPDATE tune_jobs SET status = 'running', claimed_by = ?, "
                    "claimed_at = ?, heartbeat_at = ?, attempts = attempts + 1 WHERE job_id = "
                    "(SELECT job_id FROM tune_jobs WHERE device_id = ? AND status = 'queued' "
                    "ORDER BY created_at, job_id LIMIT 1) AND status = 'queued' "
                    f"RETURNING {_COLUMNS}", [worker, at, at, device_id])


class JobConflict(ValueError):
    """The job is not running for the worker that reports on it (says what it is)."""


def _running(con: duckdb.DuckDBPyConnection, job_id: str, worker: str | None) -> None:
    job = _one(con, "SELECT status, claimed_by FROM tune_jobs WHERE job_id = ?", [job_id])
    if job is None:
        raise KeyError(job_id)
    if job["status"] != "running":
        raise JobConflict(f"job {job_id} is {job['status']}, not running")
    if worker is not None and job["claimed_by"] != worker:
        raise JobConflict(f"job {job_id} is running for worker {job['claimed_by']!r}, not "
                          f"{worker!r} (its lease ran out and it was claimed again)")


def heartbeat(store: Store, job_id: str, worker: str | None = None) -> dict[str, Any]:
    """The worker is alive and still on the job. Raises KeyError (no such job) or
    :class:`JobConflict` (not running for ``worker``)."""
    with _transaction(store) as con:
        _running(con, job_id, worker)
        con.execute("UPDATE tune_jobs SET heartbeat_at = ? WHERE job_id = ?", [now(), job_id])
    return get(store, job_id)  # type: ignore[return-value]


def finish(store: Store, job_id: str, result: Mapping[str, Any],
           worker: str | None = None) -> dict[str, Any]:
    """The job is done with ``result`` (JSON-able); same errors as :func:`heartbeat`."""
    with _transaction(store) as con:
        _running(con, job_id, worker)
        con.execute("UPDATE tune_jobs SET status = 'done', finished_at = ?, result = ?, "
                    "error = NULL WHERE job_id = ?", [now(), json.dumps(dict(result)), job_id])
    return get(store, job_id)  # type: ignore[return-value]


def fail(store: Store, job_id: str, error: str, worker: str | None = None, *,
         retry: bool = False) -> dict[str, Any]:
    """The job failed with ``error``; with ``retry`` (a worker that stops before the end) it
    is queued again instead, unless it has had :data:`MAX_ATTEMPTS` claims."""
    with _transaction(store) as con:
        _running(con, job_id, worker)
        con.execute("UPDATE tune_jobs SET status = CASE WHEN ? AND attempts < ? THEN 'queued' "
                    "ELSE 'failed' END, finished_at = CASE WHEN ? AND attempts < ? THEN NULL "
                    "ELSE ? END, claimed_by = CASE WHEN ? AND attempts < ? THEN NULL ELSE "
                    "claimed_by END, error = ? WHERE job_id = ?",
                    [retry, MAX_ATTEMPTS, retry, MAX_ATTEMPTS, now(), retry, MAX_ATTEMPTS,
                     error, job_id])
    return get(store, job_id)  # type: ignore[return-value]


def requeue_stale(store: Store, lease_s: float, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Running jobs whose last heartbeat is older than ``lease_s``: queued again, or failed
    once they have had ``max_attempts`` claims. Returns how many were touched."""
    at = now()
    cutoff = at - dt.timedelta(seconds=lease_s)
    with _transaction(store) as con:
        stale = con.execute("SELECT count(*) FROM tune_jobs WHERE status = 'running' AND "
                            "heartbeat_at < ?", [cutoff]).fetchone()
        count = int(stale[0]) if stale else 0
        if count:
            lost = (f"its worker stopped reporting for over {lease_s:g} s "
                    f"{max_attempts} times")
            con.execute("UPDATE tune_jobs SET status = CASE WHEN attempts >= ? THEN 'failed' "
                        "ELSE 'queued' END, finished_at = CASE WHEN attempts >= ? THEN ? "
                        "END, error = CASE WHEN attempts >= ? THEN ? ELSE 'worker ' || "
                        "claimed_by || ' stopped reporting; queued again' END, claimed_by = "
                        "CASE WHEN attempts >= ? THEN claimed_by END "
                        "WHERE status = 'running' AND heartbeat_at < ?",
                        [max_attempts, max_attempts, at, max_attempts, lost, max_attempts,
                         cutoff])
    return count
