"""POST /v1/tune, GET /v1/jobs/{id} and the workers' endpoints (claim, heartbeat, done,
failed). Writes need the write token; the logic is in perftune.service.jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status

from perftune.service import jobs
from perftune.service.deps import (
    WRITE_RESPONSES,
    KnowledgeDep,
    SettingsDep,
    require_read_token,
    require_write_token,
    retry_later,
)
from perftune.service.ingest import StoreBusy
from perftune.service.recommend import UnknownDevice
from perftune.service.schemas import (
    JobClaim,
    JobDone,
    JobFailed,
    JobHeartbeat,
    JobPublic,
    TuneCreate,
)
from perftune.store.jobs import JobConflict

router = APIRouter(prefix="/v1", tags=["jobs"])
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
T = TypeVar("T")

_WRITE: dict[int | str, dict[str, Any]] = {
    **WRITE_RESPONSES,
    503: {"description": "the store is busy, or too many jobs are open; retry after the "
                         "Retry-After header's seconds"}}
_JOB: dict[int | str, dict[str, Any]] = {
    **_WRITE, 404: {"description": "no such job"},
    409: {"description": "the job is not running for this worker (done, failed, or claimed "
                         "again after its lease ran out)"}}


def board(request: Request) -> jobs.WorkerBoard:
    workers: jobs.WorkerBoard = request.app.state.workers
    return workers


BoardDep = Annotated[jobs.WorkerBoard, Depends(board)]


def guarded(call: Callable[[], T], job_id: str | None = None) -> T:
    """``call()``, its errors as HTTP answers."""
    try:
        return call()
    except (StoreBusy, jobs.TooManyJobs) as exc:
        raise retry_later(exc) from exc
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            {"message": str(exc), "known_devices": exc.known}) from exc
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tune job {job_id!r}") from exc
    except JobConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post("/tune", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED,
             dependencies=[Depends(require_write_token)],
             responses={**_WRITE, 404: {"description": "unknown device"},
                        422: {"description": "invalid input"}})
def post_tune(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
              body: TuneCreate, response: Response) -> JobPublic:
    """Queue a tune job measuring the problem on the device (a worker of that device runs it;
    its measurements then answer the problem). An open job for the same problem is returned
    instead of a new one (200)."""
    job, new = guarded(lambda: jobs.queue(knowledge, settings, family=body.family,
                                          problem=body.problem, device=body.device,
                                          budget=body.budget))
    if not new:
        response.status_code = status.HTTP_200_OK
    return jobs.public(job, settings, workers)


@router.get("/jobs/{job_id}", response_model=JobPublic,
            dependencies=[Depends(require_read_token)],
            responses={404: {"description": "no such job"}})
def get_job(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
            job_id: JobId) -> JobPublic:
    """A tune job: its status, attempts, result or error, and why it waits if it does."""
    job = guarded(lambda: jobs.get(knowledge, settings, job_id))
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tune job {job_id!r}")
    return jobs.public(job, settings, workers)


@router.post("/jobs/claim", response_model=JobPublic,
             dependencies=[Depends(require_write_token)],
             responses={**_WRITE, 204: {"description": "no queued job for this device"}})
def claim_job(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
              body: JobClaim) -> Any:
    """A worker asks for work: the oldest queued job of its device, now running for it."""
    job = guarded(lambda: jobs.claim(knowledge, settings, workers, body.device_id,
                                     body.worker))
    if job is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return jobs.public(job, settings, workers)


@router.post("/jobs/{job_id}/heartbeat", response_model=JobPublic,
             dependencies=[Depends(require_write_token)], responses=_JOB)
def heartbeat_job(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
                  job_id: JobId, body: JobHeartbeat) -> JobPublic:
    """The worker is alive and still on the job (send one well within ``lease_s``)."""
    job = guarded(lambda: jobs.heartbeat(knowledge, job_id, body.worker), job_id)
    return jobs.public(job, settings, workers)


@router.post("/jobs/{job_id}/done", response_model=JobPublic,
             dependencies=[Depends(require_write_token)], responses=_JOB)
def finish_job(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
               job_id: JobId, body: JobDone) -> JobPublic:
    """The job is done: its measurements were posted, here is the answer."""
    job = guarded(lambda: jobs.finish(knowledge, job_id, body.worker, body.result), job_id)
    return jobs.public(job, settings, workers)


@router.post("/jobs/{job_id}/failed", response_model=JobPublic,
             dependencies=[Depends(require_write_token)], responses=_JOB)
def fail_job(knowledge: KnowledgeDep, settings: SettingsDep, workers: BoardDep,
             job_id: JobId, body: JobFailed) -> JobPublic:
    """The job failed (``retry``: the worker stopped early; queue it again)."""
    job = guarded(lambda: jobs.fail(knowledge, job_id, body.worker, body.error, body.retry),
                  job_id)
    return jobs.public(job, settings, workers)
