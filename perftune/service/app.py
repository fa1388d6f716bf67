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

from perftune.errors import PerftuneInputError
from perftune.service.jobs import WorkerBoard
from perftune.service.limits import BodyLimit, Metrics, WorkGate, validation_error
from perftune.service.routers import (
    autotune,
    catalog,
    docs,
    health,
    jobs,
    measurements,
    recommendations,
)
from perftune.settings import Settings

if TYPE_CHECKING:
    from perftune.model.runtime import Predictor
    from perftune.service.recommend import Knowledge
    from perftune.store.db import Store

log = logging.getLogger("perftune.service")


def load_knowledge(settings: Settings) -> Knowledge:
    """The store (built from the shipped dataset if absent) and, per family, its models
    (trained on the store's rows of the family if absent, then saved), read into memory; a
    store that a writer holds is read from a copy."""
    from perftune.service.recommend import Knowledge
    from perftune.service.storefile import reading
    from perftune.store.dataset import build_store

    if not settings.db.exists():
        log.warning("no store at %s: building it from the shipped dataset", settings.db)
        build_store(settings.db)
    with reading(settings.db) as store:
        return Knowledge.of(store, settings.db, load_models(settings, store),
                            settings.cache_bytes, interpreter=settings.interpreter_devices)


def load_models(settings: Settings, store: Store) -> dict[str, Predictor]:
    """Each family's runtime model (with its power and energy models) at its file beside
    ``settings.model``: loaded where it exists, else trained where the store has verified
    rows of the family; a family with neither has no model (its measured rows still answer).
    A model file of another family than its name says is refused."""
    from perftune.model.runtime import Predictor
    from perftune.service.families import FAMILIES, kernel, model_file
    from perftune.store.queries import trainable_families

    trainable = trainable_families(store)
    models: dict[str, Predictor] = {}
    for family in FAMILIES:
        kernel(family)  # loaded now, not in a request's validation
        path = model_file(settings.model, family)
        if not path.exists() and family not in trainable:
            continue
        existed = path.exists()
        try:
            predictor = Predictor.load_or_train(path, store, log.warning, family=family)
        except PerftuneInputError as exc:
            if not existed:
                raise
            raise PerftuneInputError(f"{exc}; or move {path} (and the power and energy models "
                                     f"beside it) away: the service then trains new ones on "
                                     f"the store at start") from exc
        found = predictor.meta.get("family")
        if found != family:
            raise PerftuneInputError(f"{path} holds a model of {found}, not of {family}; "
                                     f"move it away or name the {family} model so")
        models[family] = predictor
    return models


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.knowledge = load_knowledge(settings)
        app.state.workers = WorkerBoard()
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
    for module in (recommendations, measurements, jobs, autotune, catalog, health, docs):
        app.include_router(module.router)
    return app
