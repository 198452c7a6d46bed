"""Request-scoped access to what the lifespan loaded."""

from __future__ import annotations

from fastapi import Request

from service.errors import ModelNotFound, ModelNotReady
from service.inference.engine import InferenceEngine
from service.monitoring.monitor import Monitor
from service.prediction import Predictor
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> InferenceEngine:
    engine: InferenceEngine | None = request.app.state.engine
    if engine is None:
        raise ModelNotReady("the model is not loaded yet", {"retry": True})
    return engine


def get_predictor(request: Request) -> Predictor:
    predictor: Predictor | None = request.app.state.predictor
    if predictor is None:
        raise ModelNotReady("the model is not loaded yet", {"retry": True})
    return predictor


def require_model(engine: InferenceEngine, name: str | None) -> None:
    if name is not None and name != engine.card.name:
        raise ModelNotFound(
            f"model {name[:200]!r} is not loaded; this server serves {engine.card.name!r}",
            {"model": name[:200], "available": [engine.card.name]},
        )


async def get_monitor(request: Request) -> Monitor:
    monitor: Monitor | None = request.app.state.monitor
    if monitor is None:
        raise ModelNotReady("the model is not loaded yet", {"retry": True})
    return monitor
