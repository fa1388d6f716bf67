"""GET /healthz (always open) and GET /metrics (Prometheus text format; behind the read token
when one is set). Both run on the event loop: never queued behind the worker threads."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from perftune.service.deps import KnowledgeDep, require_read_token

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(knowledge: KnowledgeDep) -> dict[str, object]:
    return {"status": "ok", "devices": len(knowledge.devices),
            "measured_problems": len(knowledge.measured)}


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_read_token)],
            responses={401: {"description": "a read token is set and was not sent"}})
async def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from perftune.service.metrics import REGISTRY

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
