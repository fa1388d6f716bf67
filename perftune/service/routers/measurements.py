"""POST /v1/measurements: ingest, token required."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from perftune.service.deps import (
    WRITE_RESPONSES,
    KnowledgeDep,
    SettingsDep,
    limit_batch,
    require_write_token,
    retry_later,
)
from perftune.service.ingest import StoreBusy, ingest
from perftune.service.recommend import NoAnswer
from perftune.service.schemas import IngestPublic, MeasurementsCreate

router = APIRouter(prefix="/v1", tags=["measurements"])


@router.post("/measurements", response_model=IngestPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[Depends(require_write_token)],
             responses={**WRITE_RESPONSES,
                        413: {"description": "too many measurements in one request"},
                        422: {"description": "invalid or physically implausible figures"}})
def post_measurements(knowledge: KnowledgeDep, settings: SettingsDep,
                      body: MeasurementsCreate) -> IngestPublic:
    """Store measurements once each (by natural key); acknowledged means committed. Figures
    faster or more power-hungry than the device can be are refused (docs/security.md)."""
    limit_batch(list(body.measurements), settings, "measurements")
    try:
        stored = ingest(knowledge, body.measurements)
    except NoAnswer as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    except StoreBusy as exc:
        raise retry_later(exc) from exc
    return IngestPublic(received=len(body.measurements), stored=stored)
