"""The FastAPI app: ``create_app(settings)`` loads what the service knows and mounts the
routers. ``perftune serve`` runs it on uvicorn."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from perftune.service.metrics import LATENCY, REQUESTS
from perftune.service.routers import catalog, health, measurements, recommendations
from perftune.settings import Settings

if TYPE_CHECKING:
    from perftune.service.recommend import Knowledge

log = logging.getLogger("perftune.service")


def load_knowledge(settings: Settings) -> Knowledge:
    """The store (built from the shipped dataset if absent) and the model (trained on it if
    absent, then saved), read into memory."""
    from perftune.model.runtime import Predictor
    from perftune.service.recommend import Knowledge
    from perftune.store.dataset import build_store
    from perftune.store.db import Store

    if not settings.db.exists():
        log.warning("no store at %s: building it from the shipped dataset", settings.db)
        build_store(settings.db)
    with Store(settings.db, read_only=True) as store:
        predictor = Predictor.load_or_train(settings.model, store, log.warning)
    return Knowledge.load(settings.db, predictor)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.knowledge = load_knowledge(settings)
        # What is loaded now (modules, store rows, models) lives as long as the process: kept
        # out of the collector, a full collection no longer walks its ~350k objects (it took
        # 170-300 ms and was the p99 of batch requests).
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()  # let the interpreter's shutdown free it as usual

    app = FastAPI(title="perftune", version="1", lifespan=lifespan,
                  description="Best kernel configs, predicted and measured, per device.")

    @app.middleware("http")
    async def limit_and_count(request: Request,
                              call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse({"detail": f"body: larger than {settings.max_body_bytes} "
                                           f"bytes; send smaller batches"}, status_code=413)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(path).observe(time.perf_counter() - started)
        REQUESTS.labels(path, str(response.status_code)).inc()
        return response

    for module in (recommendations, measurements, catalog, health):
        app.include_router(module.router)
    return app
