"""Tune jobs, as plain functions over the loaded :class:`Knowledge` (no FastAPI here).

The service queues a job when asked (POST /v1/tune), or when a recommendation asked with
``measure=true`` has neither a measured answer nor high confidence. A worker of the job's
device (``perftune worker``) claims it, heartbeats while it measures, posts its measurements
(POST /v1/measurements, each naming the job) and marks the job done. The jobs live in the
store (perftune.store.jobs); each call opens it for writing under the service's write lock,
as an ingest does. When a worker of a device last asked for work is kept in memory, to say
why a queued job waits.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from perftune.collect.problems import Problem, shape_sizes, spread_out
from perftune.errors import StoreError
from perftune.service.ingest import RETRY_AFTER_S, StoreBusy
from perftune.service.recommend import Knowledge, UnknownDevice
from perftune.service.schemas import JobLink, JobPublic
from perftune.service.storefile import holder, is_locked
from perftune.settings import Settings
from perftune.store import jobs
from perftune.store.db import Store

# A device none of whose workers asked for work within this many lease periods has none.
POLL_LEASES = 1.0


class TooManyJobs(RuntimeError):
    """As many jobs are open as the service allows: retry later."""

    retry_after_s = 60


@dataclass
class WorkerBoard:
    """When a worker of each device last asked for work (monotonic seconds)."""

    polls: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def polled(self, device: str) -> None:
        with self.lock:
            self.polls[device] = time.monotonic()

    def seconds_since(self, device: str) -> float | None:
        with self.lock:
            at = self.polls.get(device)
        return None if at is None else time.monotonic() - at


@contextlib.contextmanager
def writing(knowledge: Knowledge) -> Iterator[Store]:
    """The store open for writing (one writer in this process at a time); StoreBusy while
    another process writes it."""
    try:
        with knowledge.write_lock, Store(knowledge.db) as store:
            yield store
    except StoreError as exc:
        if is_locked(exc):
            raise StoreBusy(f"the store is open for writing by {holder(exc)}; retry in "
                            f"{RETRY_AFTER_S} s") from exc
        raise


def queue(knowledge: Knowledge, settings: Settings, *, family: str, problem: Problem,
          device: str, budget: int | None = None) -> tuple[dict[str, Any], bool]:
    """A job measuring ``problem`` of ``family`` on ``device`` (known to the service): the
    open one if there is one, else a new one; (job, whether new)."""
    if device not in knowledge.devices.index:
        raise UnknownDevice(device, sorted(knowledge.devices.index))
    with writing(knowledge) as store:
        jobs.requeue_stale(store, settings.job_lease_s)
        job, new = jobs.enqueue(store, family=family, shape=problem.shape,
                                sizes=problem.sizes, dtype=problem.dtype, device_id=device,
                                budget=budget or settings.job_budget)
        if new and jobs.open_jobs(store) > settings.max_open_jobs:
            store.con.execute("DELETE FROM tune_jobs WHERE job_id = ?", [job["job_id"]])
            raise TooManyJobs(f"{settings.max_open_jobs} tune jobs are open (queued or "
                              f"running); retry when workers have run some")
        if new:
            queue_calibration(store, knowledge, settings, family=family, dtype=problem.dtype,
                              device=device)
    return job, new


def queue_calibration(store: Store, knowledge: Knowledge, settings: Settings, *, family: str,
                      dtype: str, device: str) -> int:
    """Tune jobs that calibrate a GPU new to the store: while it has fewer than
    ``calibration_problems`` problems of ``family`` and ``dtype`` measured or queued, jobs of
    ``calibration_budget`` measurements for problems other GPUs measured, spread over their
    sizes (:func:`spread_out`), so that `perftune fit` can correct the model for it from
    them (:meth:`RuntimeForest.adapt`). The number of jobs queued."""
    mine = {shape for fam, dev, dt, shape in knowledge.measured
            if (fam, dev, dt) == (family, device, dtype)}
    mine |= jobs.shapes(store, family=family, dtype=dtype, device_id=device)
    missing = settings.calibration_problems - len(mine)
    room = settings.max_open_jobs - jobs.open_jobs(store)
    if missing <= 0 or room <= 0:
        return 0
    others = sorted({shape for fam, dev, dt, shape in knowledge.measured
                     if fam == family and dt == dtype and dev != device} - mine)
    chosen = spread_out(others, min(missing, room))
    for shape in chosen:
        jobs.enqueue(store, family=family, shape=shape, sizes=shape_sizes(shape), dtype=dtype,
                     device_id=device, budget=settings.calibration_budget)
    return len(chosen)


def link(job: dict[str, Any]) -> JobLink:
    return JobLink(id=job["job_id"], status=job["status"], url=f"/v1/jobs/{job['job_id']}")


def with_job(body: bytes, job: dict[str, Any]) -> bytes:
    """A recommendation's JSON bytes with the job's link added."""
    answer = json.loads(body)
    answer["job"] = link(job).model_dump()
    return json.dumps(answer, separators=(",", ":")).encode()


def wants_measuring(body: bytes) -> bool:
    """Whether an answer asks for a job: not measured by perftune, and not of high
    confidence."""
    answer = json.loads(body)
    return bool(answer["source"] != "measured" and answer["confidence"] != "high"
                and answer["device"] == answer["requested_device"])


def public(job: dict[str, Any], settings: Settings, board: WorkerBoard) -> JobPublic:
    note = None
    if job["status"] == "queued":
        since = board.seconds_since(job["device_id"])
        if since is None or since > POLL_LEASES * settings.job_lease_s:
            when = ("no worker of it has asked for work since the service started"
                    if since is None else f"no worker of it has asked for work for "
                    f"{since:.0f} s")
            note = (f"waits for a worker of device {job['device_id']}: {when}; start one on "
                    f"such a device with `perftune worker --service URL`")
    return JobPublic(
        id=job["job_id"], family=job["family"], problem=job["shape"], sizes=job["sizes"],
        dtype=job["dtype"], device=job["device_id"], budget=job["budget"],
        status=job["status"], attempts=job["attempts"], created_at=_time(job["created_at"]),
        claimed_by=job["claimed_by"], claimed_at=_time(job["claimed_at"]),
        heartbeat_at=_time(job["heartbeat_at"]), finished_at=_time(job["finished_at"]),
        result=job["result"], error=job["error"], lease_s=settings.job_lease_s, note=note,
        url=f"/v1/jobs/{job['job_id']}")


def _time(value: Any) -> Any:
    return None if value is None else value.isoformat() + "Z"


def get(knowledge: Knowledge, settings: Settings, job_id: str) -> dict[str, Any] | None:
    with writing(knowledge) as store:
        jobs.requeue_stale(store, settings.job_lease_s)
        return jobs.get(store, job_id)


def claim(knowledge: Knowledge, settings: Settings, board: WorkerBoard, device: str,
          worker: str) -> dict[str, Any] | None:
    """The oldest queued job of ``device``, now running for ``worker`` (jobs whose workers
    stopped reporting are queued again first)."""
    board.polled(device)
    with writing(knowledge) as store:
        jobs.requeue_stale(store, settings.job_lease_s)
        return jobs.claim(store, device, worker)


def heartbeat(knowledge: Knowledge, job_id: str, worker: str) -> dict[str, Any]:
    with writing(knowledge) as store:
        return jobs.heartbeat(store, job_id, worker)


def finish(knowledge: Knowledge, job_id: str, worker: str, result: dict[str, Any]
           ) -> dict[str, Any]:
    with writing(knowledge) as store:
        return jobs.finish(store, job_id, result, worker)


def fail(knowledge: Knowledge, job_id: str, worker: str, error: str, retry: bool
         ) -> dict[str, Any]:
    with writing(knowledge) as store:
        return jobs.fail(store, job_id, error, worker, retry=retry)
