"""GET /v1/recommendation and POST /v1/recommendations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from perftune.service.deps import KnowledgeDep, SettingsDep, limit_batch, require_read_token
from perftune.service.recommend import NoAnswer, UnknownDevice, is_measured, recommend
from perftune.service.schemas import BatchCreate, BatchPublic, ProblemQuery, RecommendationPublic

router = APIRouter(prefix="/v1", tags=["recommendations"],
                   dependencies=[Depends(require_read_token)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device (the answer lists the known ones)"},
    422: {"description": "invalid input, or a query this service cannot answer"}}


def answer(knowledge: KnowledgeDep, query: ProblemQuery) -> RecommendationPublic:
    try:
        return recommend(knowledge, query)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            {"message": str(exc), "known_devices": exc.known}) from exc
    except NoAnswer as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc


@router.get("/recommendation", response_model=RecommendationPublic, responses=_ERRORS)
async def get_recommendation(knowledge: KnowledgeDep,
                             query: Annotated[ProblemQuery, Query()]) -> RecommendationPublic:
    """The best dataflow and config for one problem on one device, with alternatives."""
    if is_measured(knowledge, query):  # a lookup: answered on the event loop
        return answer(knowledge, query)
    return await run_in_threadpool(answer, knowledge, query)  # a model run: off the loop


@router.post("/recommendations", response_model=BatchPublic,
             responses={**_ERRORS, 413: {"description": "too many problems in one batch"}})
def post_recommendations(knowledge: KnowledgeDep, settings: SettingsDep,
                         batch: BatchCreate) -> BatchPublic:
    """Answers for a batch of problems, in order (at most ``max_batch``)."""
    limit_batch(list(batch.problems), settings, "problems")
    return BatchPublic(recommendations=[answer(knowledge, q) for q in batch.problems])
