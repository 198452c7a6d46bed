"""GET /v1/models and /v1/models/{name}: the calibration cards of the loaded models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.api.deps import get_engine, require_model
from service.api.render import model_summary
from service.api.schemas import ErrorResponse, ModelList
from service.inference.engine import InferenceEngine

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
def list_models(engine: InferenceEngine = Depends(get_engine)) -> dict[str, Any]:
    """A summary of each loaded model (one per server today)."""
    return {"models": [model_summary(engine, engine.default_coverage)]}


@router.get("/v1/models/{name}", responses={404: {"model": ErrorResponse}})
def get_model(name: str, engine: InferenceEngine = Depends(get_engine)) -> dict[str, Any]:
    """The full calibration card of model ``name``."""
    require_model(engine, name)
    return engine.card.model_dump(mode="json")
