"""One status table and one renderer per protocol, used by every error calibserve answers.

``/v1`` errors: ``{"error": {"type", "message", "details", "request_id"}}``; ``/v2`` (Open Inference
Protocol) errors: ``{"error": "<message>", "request_id"}``. Domain code raises typed ``ServiceError``s;
this module alone decides their status and headers (``Retry-After`` on a 503, ``WWW-Authenticate`` on a
401), for the exception handlers, the ASGI guards that answer before any route runs, and the hot-route
shortcut alike. Validation errors from the request schema are rewritten to name the field
(``instances[0][3]``) and the problem. Anything unexpected is logged with its traceback and answered
with a generic 500 without internals.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import (
    ArtifactError,
    ConfigurationError,
    Conflict,
    FeatureOff,
    InvalidInput,
    MalformedRequest,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from service.request_context import current_request_id

logger = logging.getLogger("calibserve.api")

V2_PREFIX = "/v2"
DEFAULT_RETRY_AFTER_S = 1


class HttpError(ServiceError):
    """An error of the HTTP layer itself (no such route, method not allowed): status and kind as given."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


class InternalError(ServiceError):
    """Anything unexpected: answered without internals (the traceback goes to the log only)."""


CLIENT_CLOSED_REQUEST = HttpError(
    499, "client_closed_request", "the client closed the connection before sending the whole request body"
)

STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    MalformedRequest: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    FeatureOff: 404,
    Conflict: 409,
    ModelLoadFailed: 400,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    ModelNotReady: 503,
    Overloaded: 503,
    StoreUnavailable: 503,
    ArtifactError: 500,
    ConfigurationError: 500,
    InternalError: 500,
}
_TAGS = {"list", "object"}


def is_v2(path: str) -> bool:
    """Paths of the Open Inference Protocol, which answer errors in its own shape."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def status_for(error: ServiceError) -> int:
    if isinstance(error, HttpError):
        return error.status
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_type(error: ServiceError) -> str:
    if isinstance(error, HttpError):
        return error.kind
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def render_error(path: str, error: ServiceError) -> Response:
    """The answer to ``error`` on ``path``: the one place that writes an error body and its headers."""
    status = status_for(error)
    request_id = current_request_id()
    if is_v2(path):
        # The protocol's clients read ``error`` as a string; a request we call unprocessable (422) is a bad
        # request (400) there.
        body: dict[str, Any] = {"error": error.message}
        status = 400 if status == 422 else status
    else:
        body = {"error": {"type": error_type(error), "message": error.message, "details": error.details}}
    if request_id is not None:
        (body if is_v2(path) else body["error"])["request_id"] = request_id
    response = JSONResponse(body, status_code=status)
    if isinstance(error, HttpError):
        response.headers.update(error.headers)  # e.g. Allow on a 405
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        response.headers["Retry-After"] = str(retry_after_seconds(error))
    return response


def retry_after_seconds(error: ServiceError) -> int:
    """Whole seconds (RFC 9110 ``delay-seconds``), at least 1: a 503 always tells clients when to come back."""
    hint = error.details.get("retry_after")
    if isinstance(hint, int | float) and math.isfinite(hint) and hint > 0:
        return max(1, math.ceil(hint))
    return DEFAULT_RETRY_AFTER_S


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        if status_for(exc) >= 500 and not isinstance(exc, InternalError | Overloaded | StoreUnavailable):
            # Shedding and an unavailable store are counted in /metrics and logged where they happen:
            # a line per refused request would flood the log exactly when the server is busiest.
            logger.error("%s: %s", type(exc).__name__, exc.message)
        return render_error(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return render_error(request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only: name them all
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app, request.url.path))}
        return render_error(request.url.path, from_http_exception(exc))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client's doing, not ours: no traceback, and counted as 499 (nginx's "client closed request")
        # rather than as a server error. Nobody reads this answer.
        logger.info("client disconnected before the whole body arrived: %s %s", request.method, request.url.path)
        return render_error(request.url.path, CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(request.url.path, InternalError("internal server error"))


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document declares for ``path`` (a path served by routes of several methods)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^/}]+\})", template)
        )
        if re.fullmatch(pattern, path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def from_http_exception(exc: StarletteHTTPException) -> ServiceError:
    """Starlette's and FastAPI's own HTTP errors as ours, so they render like every other error."""
    if exc.status_code == 413:
        return PayloadTooLarge(str(exc.detail), getattr(exc, "details", {}))
    if exc.status_code == 400:
        # FastAPI's own 400 for bodies json.loads cannot even decode (invalid UTF-8, nesting too deep).
        return MalformedRequest(f"request body could not be decoded as JSON ({exc.detail})", {"field": "body"})
    kinds = {404: "not_found", 405: "method_not_allowed"}
    return HttpError(
        exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), dict(exc.headers or {})
    )
