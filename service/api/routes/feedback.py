"""POST /v1/feedback: true labels for logged predictions, the input of live calibration."""

from __future__ import annotations

import hmac
from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api.deps import get_engine, get_monitor, get_settings
from service.api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from service.errors import InvalidInput, PayloadTooLarge, Unauthorized
from service.inference.engine import InferenceEngine
from service.monitoring.monitor import Monitor
from service.settings import Settings

router = APIRouter(tags=["monitoring"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422, 503)}


def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    valid = scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), settings.api_key.get_secret_value().encode()
    )  # the scheme is case-insensitive (RFC 7235); the key comparison takes constant time
    if not valid:
        raise Unauthorized("feedback needs 'Authorization: Bearer <CALIBSERVE_API_KEY>'")


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=ERRORS, dependencies=[Depends(require_api_key)])
def feedback(
    request: FeedbackRequest,
    engine: InferenceEngine = Depends(get_engine),
    monitor: Monitor = Depends(get_monitor),
    settings: Settings = Depends(get_settings),
) -> dict[str, Any]:
    """Record the true label of earlier predictions: recorded, duplicate (same label), conflict, unknown_id."""
    items = request.feedback
    if len(items) > settings.max_feedback_items:
        raise PayloadTooLarge(
            f"{len(items)} feedback items exceed the limit of {settings.max_feedback_items} "
            "(CALIBSERVE_MAX_FEEDBACK_ITEMS)",
            {"field": "feedback", "limit": settings.max_feedback_items},
        )
    index = {label: i for i, label in enumerate(engine.card.classes)}
    unknown = sorted({item.label for item in items if item.label not in index})
    if unknown:
        raise InvalidInput(
            f"unknown label(s) {', '.join(map(repr, unknown[:5]))}; this model's classes are "
            f"{', '.join(engine.card.classes)}",
            {"field": "feedback[].label", "unknown": unknown[:50]},
        )
    statuses = monitor.feedback([(item.prediction_id, index[item.label]) for item in items])
    return {
        "results": [
            {"prediction_id": item.prediction_id, "status": status}
            for item, status in zip(items, statuses, strict=True)
        ],
        "counts": dict(Counter(statuses)),
    }
