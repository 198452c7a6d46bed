"""The ASGI application: ``create_app(settings)``; ``service.main:app`` for uvicorn.

The lifespan loads and verifies every model of the repository (``service.repository``); start-up fails
with a message naming the file when none loads (or a single ``CALIBSERVE_MODEL_PATH`` does not).
 Importing this module loads no torch (a test asserts it).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import __version__
from service.api import connections
from service.api.errors import install_error_handlers
from service.api.middleware import AdmissionGate, BodyGuard, RequestContext
from service.api.openapi import install_model_openapi
from service.api.parsing import NPY_MEDIA_TYPE
from service.api.routes import feedback, health, history, models, predict, recalibration, v2
from service.api.routes.dashboard import install_dashboard
from service.api.routes.docs import install_docs
from service.api.shortcut import HotRoutes
from service.inference.admission import Admission
from service.inference.engine import InferenceEngine
from service.logs import configure_logging
from service.monitoring.history import LabelledCache
from service.monitoring.requests import RequestMetrics
from service.recalibration import Recalibrator
from service.repository import ModelRepository
from service.settings import Settings

DESCRIPTION = """
Calibrated class probabilities with the trust metadata of the model's calibration card:
temperature-scaled probabilities, a split-conformal prediction set, the accuracy the model had on its
test split at this confidence, and the card's ECE with its sample size.
"""


def tune_garbage_collector() -> None:
    """Measured under load (bench/RESULTS.md): p99 at 32 connections fell from ~50 ms to ~12 ms.

    Everything loaded at start-up (FastAPI, pydantic, numpy, onnxruntime, the card) lives as long as
    the process: ``gc.freeze()`` moves it out of the collector's sight, or every full collection walks
    it while requests wait. A request allocates a few hundred short-lived containers, so the default
    young-generation threshold (700) collected several times per request; 20 000 collects every few
    dozen requests, and the older generations follow less often too.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    connections.configure(settings.max_connections)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repository = ModelRepository(settings, on_change=lambda: setattr(app, "openapi_schema", None))
        try:
            await repository.start()
        except BaseException:
            await repository.close()
            raise
        app.state.repository = repository
        recalibrator = Recalibrator(repository, settings)
        try:
            await recalibrator.start()
        except BaseException:
            await repository.close()
            raise
        app.state.recalibrator = recalibrator
        app.openapi_schema = None  # describe the models now loaded
        tune_garbage_collector()
        try:
            yield
        finally:
            app.state.repository = None
            await recalibrator.close()
            await repository.close()  # answers what is queued, then commits every acknowledged prediction

    app = FastAPI(
        title="calibserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.repository = None
    install_error_handlers(app)
    app.add_middleware(HotRoutes, fastapi=app)  # added first: the innermost, inside the guards
    admission = Admission(settings.max_concurrent_requests, settings.queue_timeout_ms / 1000)
    app.state.admission = admission
    app.add_middleware(AdmissionGate, admission=admission)  # inside the guards, before the body is read
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes, binary_routes={NPY_MEDIA_TYPE: ("/predict",)})
    # Outermost: ids on every answer; requests counted and timed whatever answered them.
    app.add_middleware(RequestContext, metrics=RequestMetrics())
    app.state.history_cache = LabelledCache()
    app.state.recalibrator = None
    for module in (predict, feedback, models, health, history, recalibration, v2):
        app.include_router(module.router)
    install_docs(app)
    install_dashboard(app)
    install_model_openapi(app, lambda: _engines(app), lambda: _default(app), settings.max_instances)
    return app


def _engines(app: FastAPI) -> list[InferenceEngine]:
    repository: ModelRepository | None = app.state.repository
    return [] if repository is None else [served.engine for served in repository.serving()]


def _default(app: FastAPI) -> str | None:
    repository: ModelRepository | None = app.state.repository
    return None if repository is None else repository.default_or_none()


def __getattr__(name: str) -> Any:
    # `uvicorn service.main:app` works, but importing this module does not read the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
