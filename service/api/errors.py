"""One status table and one error shape: ``{"error": {"type", "message", "details"}}``.

Domain code raises typed ``ServiceError``s; this module alone decides their HTTP status. Validation
errors from the request schema are rewritten to name the field (``instances[0][3]``) and the problem.
Anything unexpected is logged with its traceback and answered with a generic 500 without internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.middleware import BodyTooLarge, is_v2
from service.errors import (
    ArtifactError,
    ConfigurationError,
    InvalidInput,
    MalformedRequest,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

logger = logging.getLogger("calibserve.api")

STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    MalformedRequest: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    ModelNotReady: 503,
    Overloaded: 503,
    StoreUnavailable: 503,
    ArtifactError: 500,
    ConfigurationError: 500,
}
_TAGS = {"list", "object"}


def status_for(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_type(error: ServiceError) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def error_response(status: int, kind: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "details": details or {}}}, status_code=status)


def field_path(loc: tuple[int | str, ...]) -> str:
    """('body', 'instances', 0, 'list', 3) -> 'instances[0][3]' (union tags dropped)."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _TAGS:
            path += f".{part}" if path else part
    return path or "body"


def validation_error(exc: RequestValidationError) -> ServiceError:
    return invalid_request(list(exc.errors()))


def invalid_request(errors: Sequence[Any]) -> ServiceError:
    """Pydantic errors (FastAPI's or our own parse's) -> one error naming every field at fault."""
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "invalid JSON")
            return MalformedRequest(f"request body is not valid JSON: {reason}", {"field": "body"})
        if tuple(error.get("loc", ())) == ("body",) and error.get("type") == "missing":
            return MalformedRequest("request body is required: a JSON object with 'instances'", {"field": "body"})
    problems = [
        {"field": field_path(tuple(e.get("loc", ()))), "problem": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    shown = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return InvalidInput(shown + more, {"errors": problems[:50]})


def v2_error_response(status: int, message: str) -> JSONResponse:
    """The Open Inference Protocol's error shape; its clients read ``error`` as a string. A request the
    service calls unprocessable (422) is a bad request (400) there."""
    return JSONResponse({"error": message}, status_code=400 if status == 422 else status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("%s: %s", type(exc).__name__, exc.message)
        if is_v2(request.url.path):
            return v2_error_response(status, exc.message)
        response = error_response(status, error_type(exc), exc.message, exc.details)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _service_error(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            return await _service_error(request, exc.as_service_error())
        if exc.status_code == 400:
            # FastAPI's own 400 for bodies json.loads cannot even decode (invalid UTF-8, nesting too deep).
            return await _service_error(
                request,
                MalformedRequest(f"request body could not be decoded as JSON ({exc.detail})", {"field": "body"}),
            )
        kinds = {404: "not_found", 405: "method_not_allowed"}
        if is_v2(request.url.path):
            response = v2_error_response(exc.status_code, str(exc.detail))
        else:
            response = error_response(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        if is_v2(request.url.path):
            return v2_error_response(500, "internal server error")
        return error_response(500, "internal_error", "internal server error")
