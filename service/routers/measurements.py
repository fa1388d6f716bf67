"""POST /v1/measurements: ingest, token required."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from service.deps import KnowledgeDep, SettingsDep, require_write_token
from service.recommend import NoAnswer, ingest
from service.schemas import IngestPublic, MeasurementsCreate

router = APIRouter(prefix="/v1", tags=["measurements"])


@router.post("/measurements", response_model=IngestPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[Depends(require_write_token)],
             responses={401: {"description": "missing or wrong token"},
                        403: {"description": "writes are disabled (no token configured)"}})
def post_measurements(knowledge: KnowledgeDep, settings: SettingsDep,
                      body: MeasurementsCreate) -> IngestPublic:
    """Store measurements once each (by natural key); acknowledged means committed."""
    if len(body.measurements) > settings.max_batch:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"measurements: {len(body.measurements)} in one request, at most "
                            f"{settings.max_batch}")
    try:
        stored = ingest(knowledge, body.measurements)
    except NoAnswer as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    return IngestPublic(received=len(body.measurements), stored=stored)
