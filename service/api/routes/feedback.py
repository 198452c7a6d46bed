"""POST /v1/feedback: true labels for logged predictions, the input of live calibration.

The body is read and validated here (``read_feedback``), not by FastAPI: its item count is checked before
any item is validated, a large body is parsed off the event loop, and every JSON problem reads as on
/v1/predict (``service.api.parsing``). ``FeedbackRequest`` stays the published schema.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from service.api.deps import get_repository, get_settings, require_api_key
from service.api.parsing import parse_feedback, parse_off_loop, shown
from service.api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from service.errors import InvalidInput
from service.monitoring.monitor import record_feedback
from service.repository import ModelRepository
from service.settings import Settings

router = APIRouter(tags=["monitoring"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422, 503)}


async def read_feedback(request: Request, settings: Settings = Depends(get_settings)) -> FeedbackRequest:
    """The body as ``FeedbackRequest`` (after the API key: an unauthorised body is never parsed)."""
    body = await request.body()
    return await parse_off_loop(body, partial(parse_feedback, body, settings.max_feedback_items))


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` substituted in place: ``openapi_extra`` cannot add
    components, and the route no longer declares a pydantic body that would."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


REQUEST_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(FeedbackRequest)}}}
}


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
    openapi_extra=REQUEST_BODY,
)
def feedback(
    request: FeedbackRequest = Depends(read_feedback),
    repository: ModelRepository = Depends(get_repository),
) -> dict[str, Any]:
    """Record the true label of earlier predictions: recorded, pending (the prediction is not logged yet; the
    label counts once it is), duplicate (same label), conflict, unknown_id. A label belongs to the request: it
    labels every model's prediction under that id (the answer and a shadow challenger's score), each judged
    against its own classes. 503 with Retry-After while the prediction log cannot be written."""
    items = request.feedback  # at most CALIBSERVE_MAX_FEEDBACK_ITEMS (413 from read_feedback)
    known = {label for served in repository.serving() for label in served.engine.card.classes}
    unknown = sorted({item.label for item in items if item.label not in known})
    if unknown:
        classes = sorted(known) if len(known) <= 50 else [*sorted(known)[:50], "..."]
        raise InvalidInput(
            f"unknown label(s) {', '.join(map(shown, unknown[:5]))}; the served models' classes are "
            f"{', '.join(classes)}",
            {"field": "feedback[].label", "unknown": [label[:100] for label in unknown[:50]]},
        )
    statuses = record_feedback(repository.log, [(item.prediction_id, item.label) for item in items])
    return {
        "results": [
            {"prediction_id": item.prediction_id, "status": status}
            for item, status in zip(items, statuses, strict=True)
        ],
        "counts": dict(Counter(statuses)),
    }
