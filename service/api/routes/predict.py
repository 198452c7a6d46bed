"""POST /v1/predict: calibrated probabilities with the trust metadata of the card.

The handler reads the body itself (JSON through ``service.api.parsing``'s fast parse, or an ``.npy``
matrix) instead of declaring a pydantic body: the schema is still published, from ``PredictRequest``,
but a valid request is never validated element by element. ``async`` throughout: the work happens in
the predictor's micro-batches, off the event loop, and so does the parse of a large body
(``parse_off_loop``: a few MB of JSON take tens of milliseconds to decode, even to refuse).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from numpy.typing import NDArray

from service.api.deps import get_repository
from service.api.parsing import (
    NPY_MEDIA_TYPE,
    PredictOptions,
    instance_literals,
    parse_json,
    parse_npy,
    parse_off_loop,
    requested_model,
)
from service.api.render import encode_json, model_summary, model_summary_json, render_npz, render_predictions
from service.api.schemas import ErrorResponse, PredictResponse
from service.errors import InvalidInput, ModelNotFound
from service.inference.inputs import check_instance_count
from service.repository import ServedVersion

router = APIRouter(tags=["predict"])
NPZ_MEDIA_TYPE = "application/x-npz"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "content": {
            NPZ_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": "with 'Accept: application/x-npz': the same fields as named arrays (numpy.load)",
            }
        }
    },
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            NPY_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": "a NumPy .npy file of shape [N, *instance shape] (floats or integers, converted "
                "exactly to the model's input type); the options go in the query string: coverage, top_k, "
                "include_logits (true/false), model",
            },
        },
    },
}


@router.post("/v1/predict", response_model=PredictResponse, responses=RESPONSES, openapi_extra=REQUEST_BODY)
async def predict(request: Request) -> Response:
    """Predict each instance; probabilities are temperature-scaled, sets are split-conformal."""
    return await predict_response(request, None)


@router.post(
    "/v1/models/{name}/predict", response_model=PredictResponse, responses=RESPONSES, openapi_extra=REQUEST_BODY
)
async def predict_named(name: str, request: Request) -> Response:
    """Same as /v1/predict, for clients that address models by name."""
    return await predict_response(request, name)


async def predict_response(request: Request, name: str | None) -> Response:
    repository = get_repository(request)
    max_instances: int = request.app.state.settings.max_instances
    npy = _media_type(request.headers.get("content-type")) == NPY_MEDIA_TYPE
    body = await request.body()
    name_in_request = None
    if name is None and repository.serves_several():  # the model decides how to decode the instances
        name_in_request = request.query_params.get("model") if npy else requested_model(body)
    with repository.lease(name or name_in_request) as served:
        engine = served.engine
        if npy:
            query = dict(request.query_params)
            options, features = await parse_off_loop(
                body, partial(parse_npy, body, query, engine.signature, max_instances)
            )
            coverage = _check_options(served, name, options)
        else:
            if request.scope.get("query_string"):
                raise InvalidInput(
                    "query parameters apply only to application/x-npy bodies; put the options in the JSON body",
                    {"field": "query", "got": sorted(request.query_params)[:50]},
                )
            options, coverage, features = await parse_off_loop(
                body, partial(_from_json, body, served, name, max_instances)
            )
        scored = await served.predictor.predict(features, coverage)
        if NPZ_MEDIA_TYPE in request.headers.get("accept", ""):
            model = model_summary(engine, coverage)
            content = render_npz(engine, scored.prediction, scored.ids, options.include_logits, model)
            return Response(content, media_type=NPZ_MEDIA_TYPE)
        predictions = render_predictions(
            engine, scored.prediction, scored.ids, options.top_k, options.include_logits, scored.values
        )
        content = encode_json({"predictions": predictions, "model": model_summary_json(engine, coverage)})
        return Response(content, media_type="application/json")


def _from_json(
    body: bytes, served: ServedVersion, path_name: str | None, max_instances: int
) -> tuple[PredictOptions, float, NDArray[Any]]:
    """Options, conformal level and the model's input from a JSON body (in a worker thread when it is large)."""
    signature = served.engine.signature
    options, rows = parse_json(body, signature, max_instances)
    check_instance_count(len(rows), max_instances)
    coverage = _check_options(served, path_name, options)  # unknown model or coverage: refused before the rows
    return options, coverage, signature.from_json(rows, partial(instance_literals, body))


def _check_options(served: ServedVersion, path_name: str | None, options: PredictOptions) -> float:
    if options.model is not None and options.model != served.name:
        where = f"the path names {path_name!r}" if path_name else f"this server serves {served.name!r}"
        raise ModelNotFound(
            f"the request names model {options.model[:200]!r}, but {where}",
            {"model": options.model[:200], "available": [served.name]},
        )
    engine = served.engine
    if options.top_k is not None and options.top_k > engine.card.n_classes:
        raise InvalidInput(
            f"top_k {options.top_k} exceeds the model's {engine.card.n_classes} classes", {"field": "top_k"}
        )
    return engine.resolve_coverage(options.coverage)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()
