"""The Open Inference Protocol (KServe V2) REST endpoints, for Triton/KServe/MLServer clients and platforms.

Thin: the codec is ``service.api.oip``; inference goes through the same predictor (micro-batching,
validation limits, prediction log) as /v1. Errors on these routes take the protocol's shape,
``{"error": "<message>"}`` with 400 / 404 / 413 / 503 (see ``service.api.errors``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import get_predictor, require_model
from service.api.oip import (
    HEADER_LENGTH,
    encode_infer_response,
    model_metadata,
    parse_infer,
    server_metadata,
)
from service.api.parsing import parse_off_loop
from service.errors import ModelNotFound, UnsupportedMediaType
from service.inference.engine import InferenceEngine

router = APIRouter(tags=["open inference protocol (v2)"])
V2_ERROR = {
    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
}
ERRORS: dict[int | str, dict[str, Any]] = {status: V2_ERROR for status in (400, 404, 413, 503)}


def _model(request: Request, name: str, version: str | None) -> InferenceEngine:
    engine = get_predictor(request).engine
    require_model(engine, name)
    if version is not None and version != engine.card.version:
        raise ModelNotFound(
            f"model {name[:200]!r} has no version {version[:200]!r}; the loaded version is {engine.card.version!r}",
            {"version": version[:200], "available": [engine.card.version]},
        )
    return engine


@router.get("/v2/health/live", responses=ERRORS)
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", responses=ERRORS)
async def server_ready(request: Request) -> dict[str, bool]:
    get_predictor(request)
    return {"ready": True}


@router.get("/v2", responses=ERRORS)
async def server() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions it supports."""
    return server_metadata()


@router.get("/v2/models/{name}", responses=ERRORS)
async def model(request: Request, name: str) -> dict[str, Any]:
    """Model metadata: versions, platform, and the input and output tensors (-1: any number of rows)."""
    return model_metadata(_model(request, name, None))


@router.get("/v2/models/{name}/versions/{version}", responses=ERRORS)
async def model_version(request: Request, name: str, version: str) -> dict[str, Any]:
    return model_metadata(_model(request, name, version))


@router.get("/v2/models/{name}/ready", responses=ERRORS)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    return {"name": _model(request, name, None).card.name, "ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS)
async def model_version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    return {"name": _model(request, name, version).card.name, "ready": True}


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "an inference request (JSON); with Inference-Header-Content-Length, that many bytes of "
        "JSON followed by the binary tensors (binary tensor data extension)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/v2/models/{name}/infer", responses=ERRORS, openapi_extra=INFER_BODY)
async def infer(request: Request, name: str) -> Response:
    """Calibrated probabilities (and label, confidence, prediction_set, ...) with the card's figures in
    the response ``parameters``."""
    return await infer_response(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", responses=ERRORS, openapi_extra=INFER_BODY)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await infer_response(request, name, version)


async def infer_response(request: Request, name: str, version: str | None) -> Response:
    engine = _model(request, name, version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    body = await request.body()
    max_instances: int = request.app.state.settings.max_instances
    declared = request.headers.get(HEADER_LENGTH)
    parsed = await parse_off_loop(body, partial(parse_infer, body, declared, engine.signature, max_instances))
    coverage = engine.resolve_coverage(parsed.coverage)
    scored = await get_predictor(request).predict(parsed.features, coverage)
    content, header_length = encode_infer_response(engine, parsed, scored.prediction, scored.ids, coverage)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)}
    )
