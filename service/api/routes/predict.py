"""POST /v1/predict: calibrated probabilities with the trust metadata of the card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.api.deps import get_engine, get_monitor, get_settings, require_model
from service.api.render import model_summary, render_predictions
from service.api.schemas import ErrorResponse, PredictRequest, PredictResponse
from service.errors import InvalidInput, PayloadTooLarge
from service.inference.engine import InferenceEngine
from service.inference.features import rows_to_matrix
from service.monitoring.monitor import Monitor
from service.settings import Settings

router = APIRouter(tags=["predict"])
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)
}


@router.post("/v1/predict", response_model=PredictResponse, responses=ERRORS)
def predict(
    request: PredictRequest,
    engine: InferenceEngine = Depends(get_engine),
    monitor: Monitor = Depends(get_monitor),
    settings: Settings = Depends(get_settings),
) -> JSONResponse:
    """Predict each instance; probabilities are temperature-scaled, sets are split-conformal."""
    return _predict(request, engine, monitor, settings)


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=ERRORS)
def predict_named(
    name: str,
    request: PredictRequest,
    engine: InferenceEngine = Depends(get_engine),
    monitor: Monitor = Depends(get_monitor),
    settings: Settings = Depends(get_settings),
) -> JSONResponse:
    """Same as /v1/predict, for clients that address models by name."""
    require_model(engine, name)
    return _predict(request, engine, monitor, settings)


def _predict(request: PredictRequest, engine: InferenceEngine, monitor: Monitor, settings: Settings) -> JSONResponse:
    require_model(engine, request.model)
    if len(request.instances) > settings.max_instances:
        raise PayloadTooLarge(
            f"{len(request.instances)} instances exceed the limit of {settings.max_instances} per request "
            "(CALIBSERVE_MAX_INSTANCES)",
            {"field": "instances", "limit": settings.max_instances},
        )
    if request.top_k is not None and request.top_k > engine.card.n_classes:
        raise InvalidInput(
            f"top_k {request.top_k} exceeds the model's {engine.card.n_classes} classes", {"field": "top_k"}
        )
    coverage = engine.resolve_coverage(request.coverage)  # unknown coverage: 422 before looking at the rows
    features = rows_to_matrix(request.instances, engine.card.io.n_features, engine.card.io.feature_names)
    batch = engine.predict(features, coverage)
    ids = monitor.record(batch.class_index, batch.confidence, batch.probabilities, features)
    return JSONResponse(
        {
            "predictions": render_predictions(engine, batch, ids, request.top_k, request.include_logits),
            "model": model_summary(engine, coverage),
        }
    )
