"""The ASGI application: ``create_app(settings)``; ``service.main:app`` for uvicorn.

The lifespan loads and verifies the artifact once; a broken artifact stops start-up with a message
naming the file. Importing this module loads no torch (a test asserts it).
"""

from __future__ import annotations

import gc
import logging
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
from service.api.routes import feedback, health, models, predict, v2
from service.api.shortcut import HotRoutes
from service.inference.admission import Admission
from service.inference.artifact import load_artifact
from service.inference.engine import InferenceEngine
from service.logs import configure_logging
from service.monitoring.monitor import Monitor
from service.monitoring.requests import RequestMetrics
from service.prediction import Predictor
from service.settings import Settings

logger = logging.getLogger("calibserve")

DESCRIPTION = """
Calibrated class probabilities with the trust metadata of the model's calibration card:
temperature-scaled probabilities, a split-conformal prediction set, the accuracy the model had on its
test split at this confidence, and the card's ECE with its sample size.
"""


def load_engine(settings: Settings) -> InferenceEngine:
    artifact = load_artifact(settings.model_path)
    return InferenceEngine(
        artifact,
        abstain_below=settings.abstain_below,
        target_accuracy=settings.target_accuracy,
        min_bin_support=settings.min_bin_support,
        conformal_guarantee=settings.conformal_guarantee,
        threads=settings.inference_threads,
    )


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
        engine = load_engine(settings)
        monitor = Monitor(settings, engine.card)
        predictor = Predictor(
            engine,
            monitor,
            max_batch_rows=settings.batch_max_rows,
            max_batch_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue_rows=settings.max_queue_rows,
            queue_timeout_s=settings.queue_timeout_ms / 1000,
        )
        app.state.engine, app.state.monitor, app.state.predictor = engine, monitor, predictor
        tune_garbage_collector()
        logger.info("serving %s version %s from %s", engine.card.name, engine.card.version[:12], settings.model_path)
        try:
            yield
        finally:
            app.state.engine = app.state.monitor = app.state.predictor = None
            await predictor.close()
            monitor.close()  # drains the log queue: every acknowledged prediction is committed

    app = FastAPI(title="calibserve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = None
    app.state.monitor = None
    app.state.predictor = None
    install_error_handlers(app)
    app.add_middleware(HotRoutes, fastapi=app)  # added first: the innermost, inside the guards
    admission = Admission(settings.max_concurrent_requests, settings.queue_timeout_ms / 1000)
    app.state.admission = admission
    app.add_middleware(AdmissionGate, admission=admission)  # inside the guards, before the body is read
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes, binary_routes={NPY_MEDIA_TYPE: ("/predict",)})
    # Outermost: ids on every answer; requests counted and timed whatever answered them.
    app.add_middleware(RequestContext, metrics=RequestMetrics(), served_model=lambda: _served(app))
    for module in (predict, feedback, models, health, v2):
        app.include_router(module.router)
    install_model_openapi(app, lambda: app.state.engine.card if app.state.engine else None, settings.max_instances)
    return app


def _served(app: FastAPI) -> tuple[str, str] | None:
    engine: InferenceEngine | None = app.state.engine
    return None if engine is None else (engine.card.name, engine.card.version[:12])


def __getattr__(name: str) -> Any:
    # `uvicorn service.main:app` works, but importing this module does not read the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
