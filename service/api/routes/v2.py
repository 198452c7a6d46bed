"""The Open Inference Protocol (KServe V2) REST endpoints, for Triton/KServe/MLServer clients and platforms.

Thin: the codec is ``service.api.oip``; inference goes through the same predictor (micro-batching,
validation limits, prediction log) as /v1. Errors on these routes take the protocol's shape,
``{"error": "<message>"}`` with 400 / 404 / 413 / 503 (see ``service.api.errors``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.deps import get_repository, require_api_key
from service.api.oip import (
    HEADER_LENGTH,
    encode_infer_response,
    model_metadata,
    parse_infer,
    server_metadata,
)
from service.api.parsing import parse_off_loop
from service.errors import MalformedRequest, ModelLoadFailed, ModelNotFound, ServiceError, UnsupportedMediaType
from service.repository import ModelStatus, ServedVersion
from service.settings import Settings

router = APIRouter(tags=["open inference protocol (v2)"])
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)
V2_ERROR = {
    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
}
ERRORS: dict[int | str, dict[str, Any]] = {status: V2_ERROR for status in (400, 404, 413, 503)}


def _model(request: Request, name: str, version: str | None) -> ServedVersion:
    return _check_version(get_repository(request).resolve(name), version)


def _check_version(served: ServedVersion, version: str | None) -> ServedVersion:
    if version is not None and version != served.version:
        raise ModelNotFound(
            f"model {served.name!r} has no version {version[:200]!r}; the loaded version is {served.version!r}",
            {"version": version[:200], "available": [served.version]},
        )
    return served


@router.get("/v2/health/live", responses=ERRORS)
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", responses=ERRORS)
async def server_ready(request: Request) -> dict[str, bool]:
    get_repository(request)
    return {"ready": True}


@router.get("/v2", responses=ERRORS)
async def server() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions it supports."""
    return server_metadata()


@router.get("/v2/models/{name}", responses=ERRORS)
async def model(request: Request, name: str) -> dict[str, Any]:
    """Model metadata: versions, platform, and the input and output tensors (-1: any number of rows)."""
    return model_metadata(_model(request, name, None).engine)


@router.get("/v2/models/{name}/versions/{version}", responses=ERRORS)
async def model_version(request: Request, name: str, version: str) -> dict[str, Any]:
    return model_metadata(_model(request, name, version).engine)


@router.get("/v2/models/{name}/ready", responses=ERRORS)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    return {"name": _model(request, name, None).name, "ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS)
async def model_version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    return {"name": _model(request, name, version).name, "ready": True}


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
    _model(request, name, version)  # a missing model or version: 404 before the body is read
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    body = await request.body()
    max_instances: int = request.app.state.settings.max_instances
    declared = request.headers.get(HEADER_LENGTH)
    with get_repository(request).lease(name) as served:
        _check_version(served, version)  # it may have been replaced while the body was read
        engine = served.engine
        parsed = await parse_off_loop(body, partial(parse_infer, body, declared, engine.signature, max_instances))
        coverage = engine.resolve_coverage(parsed.coverage)
        scored = await served.predictor.predict(parsed.features, coverage)
        content, header_length = encode_infer_response(
            engine, parsed, scored.prediction, scored.ids, coverage, scored.values
        )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)}
    )


# -- Triton's model repository extension: tritonclient's get_model_repository_index, load_model, unload_model --
class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(False, description="list only the models that are ready")


class RepositoryLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Triton's load parameters; calibserve takes none (a config or file "
        "override is refused: the artifact directory is the whole model)",
    )


def _triton_status(status: ModelStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": status.name, "state": status.state.upper()}
    if status.version is not None:
        entry["version"] = status.version
    if status.reason is not None:
        entry["reason"] = status.reason
    return entry


async def _optional_body(request: Request, model: type[BaseModelT]) -> BaseModelT:
    body = await request.body()
    if not body.strip():
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise MalformedRequest(f"invalid request body: {error.errors(include_url=False)[0]['msg']}") from None


@router.post("/v2/repository/index", responses=ERRORS)
async def repository_index(request: Request) -> list[dict[str, Any]]:
    """Every model of the repository: name, serving version, state (READY, LOADING, UNAVAILABLE) and reason."""
    options = await _optional_body(request, RepositoryIndexRequest)
    statuses = get_repository(request).statuses()
    return [_triton_status(s) for s in statuses if s.state == "ready" or not options.ready]


@router.post("/v2/repository/models/{name}/load", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def repository_load(request: Request, name: str) -> dict[str, Any]:
    """Load or reload ``name`` from the repository: verified beside the serving version, then swapped in;
    requests in flight finish on the old version. A failure leaves the old version serving (400, with why)."""
    options = await _optional_body(request, RepositoryLoadRequest)
    _explicit_control(request)
    if options.parameters:
        raise MalformedRequest(
            f"load parameters are not supported ({', '.join(sorted(options.parameters))[:200]}): put the new "
            "artifact in the model's directory and load it"
        )
    try:
        status = await get_repository(request).load(name)
    except ModelNotFound:
        raise
    except ServiceError as error:
        raise ModelLoadFailed(f"failed to load {name[:200]!r}: {error.message}") from None
    return _triton_status(status)


@router.post("/v2/repository/models/{name}/unload", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def repository_unload(request: Request, name: str) -> dict[str, Any]:
    """Stop serving ``name``; requests in flight finish first."""
    await _optional_body(request, RepositoryLoadRequest)
    _explicit_control(request)
    return _triton_status(await get_repository(request).unload(name))


def _explicit_control(request: Request) -> None:
    """Load and unload through the API only where they stick: not in poll mode (the next poll would undo them;
    Triton refuses them there too), and not with several workers (each process holds its own models: a load
    sent to one would leave the others on the old version)."""
    settings: Settings = request.app.state.settings
    if settings.repository_poll_seconds is not None:
        raise MalformedRequest(
            "the model repository is polled (CALIBSERVE_REPOSITORY_POLL_SECONDS): add, replace or remove the "
            "model's directory instead; explicit load and unload are off in poll mode, as in Triton"
        )
    workers = settings.workers
    if workers > 1:
        raise MalformedRequest(
            f"the repository API loads into one worker process, and this server runs {workers}: use poll mode "
            "(CALIBSERVE_REPOSITORY_POLL_SECONDS), which every worker follows, to load, replace and unload models",
            {"workers": workers},
        )
