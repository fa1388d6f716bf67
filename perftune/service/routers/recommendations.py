"""GET /v1/recommendation and POST /v1/recommendations.

Answers are served as the cached JSON bytes. Cached answers and stored problems are answered
on the event loop (a lookup); anything that runs the model waits for a worker thread
(:class:`~perftune.service.limits.WorkGate`: 503 with Retry-After when too many wait)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from perftune.service.deps import (
    GateDep,
    KnowledgeDep,
    SettingsDep,
    limit_batch,
    limit_work,
    require_read_token,
)
from perftune.service.jobs import queue, wants_measuring, with_job
from perftune.service.recommend import (
    Knowledge,
    NoAnswer,
    UnknownDevice,
    needs_model,
    recommend_json,
)
from perftune.service.routers.jobs import guarded
from perftune.service.schemas import (
    BatchCreate,
    BatchPublic,
    ProblemFields,
    ProblemParams,
    RecommendationPublic,
)

router = APIRouter(prefix="/v1", tags=["recommendations"],
                   dependencies=[Depends(require_read_token)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device (the answer lists the known ones)"},
    422: {"description": "invalid input, or a query this service cannot answer"},
    503: {"description": "busy: too many requests are computing answers; retry after the "
                         "Retry-After header's seconds"}}


def answer(knowledge: Knowledge, query: ProblemFields) -> bytes:
    try:
        return recommend_json(knowledge, query)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            {"message": str(exc), "known_devices": exc.known}) from exc
    except NoAnswer as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.get("/recommendation", response_model=RecommendationPublic, responses=_ERRORS)
async def get_recommendation(knowledge: KnowledgeDep, gate: GateDep, settings: SettingsDep,
                             query: Annotated[ProblemParams, Query()]) -> Response:
    """The best dataflow and config for one problem of a family (default gemm) on one device,
    with alternatives. The family's sizes are parameters of their names (its dims in
    /v1/families; gemm's m, n, k). With ``measure=true``, an answer that is neither measured
    nor of high confidence queues a tune job for the problem and links it (``job``)."""
    body = knowledge.cached(query)
    if body is None:
        if not needs_model(knowledge, query):  # a lookup or a refusal: on the event loop
            body = answer(knowledge, query)
        else:
            async with gate.slot():  # a model run: in a worker thread, when one is free
                body = await run_in_threadpool(answer, knowledge, query)
    if query.measure and wants_measuring(body):
        job, _ = await run_in_threadpool(
            guarded, lambda: queue(knowledge, settings, family=query.family,
                                   problem=query.problem, device=query.device))
        body = with_job(body, job)
    return _json(body)


def _answers(knowledge: Knowledge, problems: Sequence[ProblemFields]) -> list[bytes]:
    return [answer(knowledge, q) for q in problems]


@router.post("/recommendations", response_model=BatchPublic,
             responses={**_ERRORS, 413: {"description": "too many problems, choices or "
                                                        "problems needing the model"}})
async def post_recommendations(knowledge: KnowledgeDep, settings: SettingsDep, gate: GateDep,
                               batch: BatchCreate) -> Response:
    """Answers for a batch of problems, in order (at most ``max_batch`` problems, ``max_choices``
    choices and ``max_model_problems`` problems that need the model). Each names its family
    (default gemm) and its sizes in ``sizes`` (gemm's may be ``m``, ``n``, ``k``)."""
    problems = batch.problems
    limit_batch(list(problems), settings, "problems")
    limit_work(problems, knowledge, settings)
    parts = [knowledge.cached(q) for q in problems]
    if any(part is None for part in parts):
        async with gate.slot():
            parts = list(await run_in_threadpool(_answers, knowledge, problems))
    return _json(b'{"recommendations":[' + b",".join(p or b"" for p in parts) + b"]}")
