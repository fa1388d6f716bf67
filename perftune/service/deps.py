"""FastAPI dependencies (``Annotated``): settings, the loaded knowledge, token checks.

All are ``async``: trivial work that would otherwise cost a thread-pool hop per request."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from perftune.service.limits import WorkGate
from perftune.service.recommend import Knowledge, needs_model
from perftune.service.schemas import ProblemFields
from perftune.settings import Settings

_bearer = HTTPBearer(auto_error=False)

# What every write route may answer besides its own (OpenAPI ``responses``).
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong token"},
    403: {"description": "writes are disabled (no token configured)"},
    503: {"description": "another process is writing the store; retry after the Retry-After "
                         "header's seconds"}}


class RetryLater(Protocol):
    retry_after_s: int


def retry_later(exc: RetryLater) -> HTTPException:
    """503 with Retry-After, for work the service cannot take now (a busy store, full
    queues)."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc),
                         headers={"Retry-After": str(exc.retry_after_s)})


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_knowledge(request: Request) -> Knowledge:
    return request.app.state.knowledge


async def get_gate(request: Request) -> WorkGate:
    return request.app.state.gate


def _check(expected: SecretStr | None, given: HTTPAuthorizationCredentials | None,
           what: str) -> None:
    if expected is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"{what} are disabled: start the service with PERFTUNE_TOKEN set")
    # compare_digest: constant time, so the token cannot be guessed byte by byte
    if given is None or not secrets.compare_digest(given.credentials.encode(),
                                                   expected.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "missing or wrong token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


async def require_write_token(settings: Annotated[Settings, Depends(get_settings)],
                        credentials: Annotated[HTTPAuthorizationCredentials | None,
                                               Depends(_bearer)]) -> None:
    _check(settings.token, credentials, "writes")


async def require_read_token(settings: Annotated[Settings, Depends(get_settings)],
                             request: Request) -> None:
    """Reads are open unless PERFTUNE_READ_TOKEN is set. The header is read by hand so that
    the OpenAPI schema does not claim that open reads need a token."""
    if settings.read_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = (HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
                 if scheme.lower() == "bearer" and token else None)
        _check(settings.read_token, given, "reads")


def limit_batch(items: list[object], settings: Settings, field: str) -> None:
    """413 for a request with more items than ``max_batch``, naming the field."""
    if len(items) > settings.max_batch:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"{field}: {len(items)} in one request, at most "
                            f"{settings.max_batch}; split it")


def limit_work(problems: Sequence[ProblemFields], knowledge: Knowledge, settings: Settings) -> None:
    """413 for a batch asking for more choices than ``max_choices`` (each problem: top_k + 1)
    or with more problems that need the model than ``max_model_problems``."""
    choices = sum(q.top_k + 1 for q in problems)
    if choices > settings.max_choices:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"problems: {choices} choices asked for (top_k + 1 per problem), "
                            f"at most {settings.max_choices} per request; ask for a smaller "
                            f"top_k or split the batch")
    modelled = sum(needs_model(knowledge, q) for q in problems)
    if modelled > settings.max_model_problems:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"problems: {modelled} need the model (neither stored nor cached), "
                            f"at most {settings.max_model_problems} per request; split the "
                            f"batch")


SettingsDep = Annotated[Settings, Depends(get_settings)]
KnowledgeDep = Annotated[Knowledge, Depends(get_knowledge)]
GateDep = Annotated[WorkGate, Depends(get_gate)]
