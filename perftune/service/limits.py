"""What one request, and all of them together, may cost the service (docs/security.md).

* :class:`BodyLimit`: request bodies counted as they are read, whatever the transfer encoding
  (a chunked body has no Content-Length to trust), 413 once over ``max_body_bytes``.
* :func:`validation_error`: 422 answers that name the field but never echo unbounded input.
* :class:`WorkGate`: at most ``model_workers`` requests compute answers at once and at most
  ``model_queue`` wait for one; the rest get 503 with Retry-After. Computing runs in worker
  threads, never on the event loop, so /healthz and cached answers stay quick under load.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perftune.service.metrics import LATENCY, REQUESTS

ECHO_CHARS = 120  # the most of a client's input that a 422 repeats, per error
MAX_ERRORS = 20  # errors listed in one 422; the rest are counted


class BodyLimit:
    """Pure ASGI middleware: wraps ``receive`` and counts the body's bytes as the app reads
    them; past ``max_bytes`` the read fails with 413 (the app's exception handler answers it;
    an app that let it escape is answered here). A declared Content-Length over the limit is
    answered 413 before anything is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> HTTPException:
        return HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                             f"body: larger than {self.max_bytes} bytes; send smaller batches",
                             headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, self.too_large())
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self.too_large()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except HTTPException as exc:
            if started or exc.status_code != status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
                raise
            await self._refuse(scope, receive, send, exc)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
        response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                                headers=exc.headers)
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else 1 << 62  # unparseable: refuse
    return None


class Metrics:
    """Pure ASGI middleware: Prometheus counts and latency per route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def watched(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(path).observe(time.perf_counter() - started)
            REQUESTS.labels(path, str(code)).inc()


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each wrong field, with at most :data:`ECHO_CHARS` of what was sent (as
    JSON where it is finite and short, else a cut ``repr``) and at most :data:`MAX_ERRORS`
    errors: a large or non-finite input is never echoed whole."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail: list[dict[str, Any]] = [_bounded(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": [],
                       "msg": f"{len(errors) - MAX_ERRORS} more errors not listed"})
    return JSONResponse({"detail": detail}, status_code=422)


def _bounded(error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _cut(str(error.get("type", ""))),
        "loc": [part if isinstance(part, int) else _cut(str(part))
                for part in error.get("loc", ())][:16],
        "msg": _cut(str(error.get("msg", "")), 4 * ECHO_CHARS),
    }
    if "input" in error:
        out["input"] = _echo(error["input"])
    # ctx: the rule broken (gt, expected, ...); its "error" is already in msg
    ctx = {k: v for k, v in (error.get("ctx") or {}).items() if k != "error"}
    if ctx:
        out["ctx"] = {_cut(str(k)): _cut(str(v)) for k, v in list(ctx.items())[:8]}
    return out


def _echo(value: Any) -> Any:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return _cut(repr(value))
    return value if len(text) <= ECHO_CHARS else _cut(text)


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Saturated(HTTPException):
    def __init__(self, retry_after_s: int, busy: int) -> None:
        super().__init__(status.HTTP_503_SERVICE_UNAVAILABLE,
                         f"busy: {busy} requests are computing answers or waiting to; retry "
                         f"in {retry_after_s} s (answers already cached or stored are served "
                         f"meanwhile)", headers={"Retry-After": str(retry_after_s)})


class WorkGate:
    """Admission to the worker threads that compute answers: ``workers`` at once and
    ``queue`` more waiting (each for at most ``wait_s``); any further request is refused at
    once with 503. Used from the event loop only (admission needs no lock)."""

    def __init__(self, workers: int, queue: int, wait_s: float) -> None:
        self.workers, self.queue, self.wait_s = workers, queue, wait_s
        self._slots = asyncio.Semaphore(workers)
        self.admitted = 0  # running or waiting
        self._hold_s = 1.0  # moving average of how long a request holds a worker

    def retry_after(self) -> int:
        """Seconds until the requests admitted now are likely done (1 to 60)."""
        rounds = max(1.0, self.admitted / self.workers)
        return max(1, min(60, math.ceil(self._hold_s * rounds)))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.admitted >= self.workers + self.queue:
            raise Saturated(self.retry_after(), self.admitted)
        self.admitted += 1  # counted before the first await: the check above stays true
        try:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                raise Saturated(self.retry_after(), self.admitted) from None
            started = time.perf_counter()
            try:
                yield
            finally:
                self._slots.release()
                self._hold_s = 0.8 * self._hold_s + 0.2 * (time.perf_counter() - started)
        finally:
            self.admitted -= 1
