"""GET /healthz and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from perftune.service.deps import KnowledgeDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(knowledge: KnowledgeDep) -> dict[str, object]:
    return {"status": "ok", "devices": len(knowledge.devices),
            "measured_problems": len(knowledge.measured)}


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from perftune.service.metrics import REGISTRY

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
