"""GET and POST /v1/autotune/records: the ``autotune`` decorator's measurements and choices,
shared through the service (``PERFTUNE_URL``). Reads need the read token, writes the write
token; the rows go through perftune.store.autotune_records as the decorator's local store's do."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from perftune.service.deps import (
    WRITE_RESPONSES,
    KnowledgeDep,
    SettingsDep,
    limit_batch,
    require_read_token,
    require_write_token,
    retry_later,
)
from perftune.service.ingest import StoreBusy
from perftune.service.jobs import writing
from perftune.service.schemas import (
    AutotuneIdentity,
    AutotuneRecordsCreate,
    AutotuneRecordsPublic,
    AutotuneStoredPublic,
)
from perftune.service.storefile import reading
from perftune.store.autotune_records import read_records, write_records
from perftune.store.db import now

router = APIRouter(prefix="/v1", tags=["autotune"])


@router.get("/autotune/records", response_model=AutotuneRecordsPublic,
            dependencies=[Depends(require_read_token)],
            responses={401: {"description": "missing or wrong token"}})
def get_records(knowledge: KnowledgeDep,
                identity: Annotated[AutotuneIdentity, Query()]) -> AutotuneRecordsPublic:
    """A kernel's choices and measurements for one source, device and software."""
    with reading(knowledge.db) as store:
        choices, measured = read_records(store, identity.model_dump())
    return AutotuneRecordsPublic(choices=_records(choices), measurements=_records(measured))


@router.post("/autotune/records", response_model=AutotuneStoredPublic,
             status_code=status.HTTP_201_CREATED, dependencies=[Depends(require_write_token)],
             responses={**WRITE_RESPONSES,
                        413: {"description": "too many measurements in one request"}})
def post_records(knowledge: KnowledgeDep, settings: SettingsDep,
                 body: AutotuneRecordsCreate) -> AutotuneStoredPublic:
    """Store one key's measurements and its choice in one transaction; the answer is the
    stored choice (the first one stored for that key wins)."""
    limit_batch(list(body.measurements), settings, "measurements")
    identity = body.model_dump(include=set(AutotuneIdentity.model_fields))
    try:
        with writing(knowledge) as store:
            stored = write_records(store, identity,
                                   [m.model_dump() for m in body.measurements],
                                   body.choice.model_dump(), now())
    except StoreBusy as exc:
        raise retry_later(exc) from exc
    return AutotuneStoredPublic(choice=_records_of([stored])[0] if stored else None)


def _records(frame: Any) -> list[dict[str, Any]]:
    return _records_of(frame.to_dict("records"))


def _records_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready rows: timestamps as ISO text, NaN as null."""
    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value.isoformat() if hasattr(value, "isoformat") else value

    return [{k: plain(v) for k, v in row.items()} for row in rows]
