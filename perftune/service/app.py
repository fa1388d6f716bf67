"""The FastAPI app: ``create_app(settings)`` loads what the service knows and mounts the
routers. ``perftune serve`` runs it on uvicorn."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from perftune.service.limits import BodyLimit, Metrics, WorkGate, validation_error
from perftune.service.routers import catalog, docs, health, measurements, recommendations
from perftune.settings import Settings

if TYPE_CHECKING:
    from perftune.service.recommend import Knowledge

log = logging.getLogger("perftune.service")


def load_knowledge(settings: Settings) -> Knowledge:
    """The store (built from the shipped dataset if absent) and the model (trained on it if
    absent, then saved), read into memory; a store that a writer holds is read from a copy."""
    from perftune.model.runtime import Predictor
    from perftune.service.recommend import Knowledge
    from perftune.service.storefile import reading
    from perftune.store.dataset import build_store

    if not settings.db.exists():
        log.warning("no store at %s: building it from the shipped dataset", settings.db)
        build_store(settings.db)
    with reading(settings.db) as store:
        predictor = Predictor.load_or_train(settings.model, store, log.warning)
        return Knowledge.of(store, settings.db, predictor, settings.cache_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.knowledge = load_knowledge(settings)
        app.state.gate = WorkGate(settings.model_workers, settings.model_queue,
                                  settings.model_wait_s)
        # What is loaded now (modules, store rows, models) lives as long as the process: kept
        # out of the collector, a full collection no longer walks its ~350k objects (it took
        # 170-300 ms and was the p99 of batch requests).
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()  # let the interpreter's shutdown free it as usual

    # The schema and docs pages are routes of ours (routers/docs.py), behind the read token.
    app = FastAPI(title="perftune", version="1", lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Best kernel configs, predicted and measured, per device. "
                  "Limits and tokens: docs/security.md.")
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Metrics)  # added last: outermost, so it counts the 413s too
    for module in (recommendations, measurements, catalog, health, docs):
        app.include_router(module.router)
    return app
