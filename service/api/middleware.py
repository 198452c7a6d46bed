"""ASGI middleware that must act before any route runs.

``RequestContext`` (outermost): the request id (``X-Request-ID`` taken or made, returned on every answer,
put on every log record), the request metrics and the access log line, from one timing of the request.
``BodyGuard``: media type (415) and body size (413), from Content-Length or while the body streams in, so an
oversized body is never read into memory whole. ``AdmissionGate``: the bound on inference requests in flight.
Their errors go through the one renderer (``service.api.errors.render_error``), like every other error.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import is_v2, render_error
from service.errors import Overloaded, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.inference.admission import Admission
from service.monitoring.prometheus import SHED
from service.monitoring.requests import RequestMetrics
from service.request_context import RECEIVED_AT, REQUEST_ID, SCOPE_RECEIVED_AT, SERVED_MODEL, received_at

access_logger = logging.getLogger("calibserve.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_GUARDED_HEADERS = {b"content-length", b"content-type", b"transfer-encoding"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def new_request_id() -> str:
    return secrets.token_hex(16)


def accepted_request_id(value: bytes | None) -> str:
    """The client's id when it is a sane token (printable ASCII, no spaces, at most 128 characters): it goes
    into logs and headers, so anything else is replaced by a fresh one rather than echoed."""
    if value and len(value) <= MAX_REQUEST_ID_LENGTH and all(0x21 <= byte <= 0x7E for byte in value):
        return value.decode("ascii")
    return new_request_id()


class RequestContext:
    """Request id, request metrics and access log for every HTTP request, including those the guards refuse."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: RequestMetrics,
    ) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((value for name, value in scope["headers"] if name.lower() == REQUEST_ID_HEADER), None)
        request_id = accepted_request_id(supplied)
        token = REQUEST_ID.set(request_id)
        received = RECEIVED_AT.set(scope.get(SCOPE_RECEIVED_AT) or time.monotonic())
        served = SERVED_MODEL.set(None)  # the model version that answers sets it (repository.lease)
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = str(getattr(scope.get("route"), "path", None) or "unmatched")  # the template, never the path
            self.metrics.record(route, scope["method"], status, seconds)
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, route, status, seconds, SERVED_MODEL.get())
            REQUEST_ID.reset(token)
            RECEIVED_AT.reset(received)
            SERVED_MODEL.reset(served)


def _log_access(scope: Scope, route: str, status: int, seconds: float, model: tuple[str, str] | None) -> None:
    client = scope.get("client")
    fields = {
        "method": scope["method"],
        "route": route,
        "path": scope["path"],
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "model": model[0] if model else None,
        "version": model[1] if model else None,
    }
    access_logger.info(
        '%s - "%s %s" %d %.1f ms',
        fields["client"] or "-",
        scope["method"],
        scope["path"],
        status,
        seconds * 1000,
        extra=fields,
    )


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-stream. An HTTPException, because FastAPI re-raises those from body
    parsing (anything else becomes a generic 400) and the app's handler renders it as our 413."""

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(413, too_large_message(limit))
        self.details = {"limit_bytes": limit, "received_at_least": received}


def too_large_message(limit: int) -> str:
    return f"request body exceeds {limit} bytes (CALIBSERVE_MAX_BODY_BYTES)"


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(content_type: str) -> bool:
    media = _media(content_type)
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Answer from ASGI middleware, before any route: the same renderer as the exception handlers."""
    await render_error(scope["path"], error)(scope, receive, send)


class BodyGuard:
    """415 for non-JSON bodies, 413 for bodies over ``max_body_bytes`` (declared or streamed)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, binary_routes: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.binary_routes = binary_routes or {}  # media type -> path suffixes that accept it

    def _accepts(self, content_type: str, path: str) -> bool:
        if _is_json(content_type):
            return True
        suffixes = self.binary_routes.get(_media(content_type))
        return suffixes is not None and path.endswith(suffixes)

    def _accepted_media(self, path: str) -> str:
        binary = [media for media, suffixes in self.binary_routes.items() if path.endswith(suffixes)]
        return "".join(f" or {media}" for media in binary)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {
            name.lower().decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name.lower() in _GUARDED_HEADERS
        }
        length = headers.get("content-length")
        has_body = "transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))
        content_type = headers.get("content-type")
        # The binary tensor extension of /v2 has no media type of its own (Triton's client sends none): the
        # route reads Inference-Header-Content-Length instead.
        if (
            not is_v2(scope["path"])
            and (content_type is not None or has_body)
            and not self._accepts(content_type or "", scope["path"])
        ):
            message = (
                f"request body must be JSON (Content-Type: application/json{self._accepted_media(scope['path'])}), "
                f"got {content_type or 'no Content-Type'}"
            )
            await send_error(scope, receive, send, UnsupportedMediaType(message, {"field": "content-type"}))
            return
        declared = _declared_length(length)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(scope, receive, send, declared)
            return
        received = 0
        response_started = False

        chunks = 0

        async def limited_receive() -> Message:
            nonlocal received, chunks
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                chunks += 1
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes, received)
                if chunks > 1 and not message.get("more_body", False):
                    # A body that streamed in: the queue deadline counts from its end, so a slow upload is
                    # not mistaken for time spent waiting on an overloaded server.
                    RECEIVED_AT.set(time.monotonic())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._too_large(scope, receive, send, received)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        error = PayloadTooLarge(
            too_large_message(self.max_body_bytes), {"limit_bytes": self.max_body_bytes, "received_at_least": size}
        )
        await send_error(scope, receive, send, error)


def _declared_length(value: str | None) -> int | None:
    """Content-Length as a number, without converting a thousand-digit string (the server's HTTP parser has
    already refused malformed ones; a length longer than 18 digits is over any limit anyway)."""
    if value is None:
        return None
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) if len(digits) <= 18 else 10**18


INFERENCE_ROUTES = (
    (re.compile(r"^/v1/predict$"), "/v1/predict"),
    (re.compile(r"^/v1/models/[^/]+/predict$"), "/v1/models/{name}/predict"),
    (re.compile(r"^/v2/models/[^/]+/infer$"), "/v2/models/{name}/infer"),
    (re.compile(r"^/v2/models/[^/]+/versions/[^/]+/infer$"), "/v2/models/{name}/versions/{version}/infer"),
)


class _Route:
    """What the request metrics and the access log read from a matched route: its path template."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTES = {template: _Route(template) for _, template in INFERENCE_ROUTES}


def inference_route(path: str) -> str | None:
    """The route template of an inference path, or None for every other path."""
    if path.startswith(("/v1/", "/v2/")):
        for pattern, template in INFERENCE_ROUTES:
            if pattern.match(path):
                return template
    return None


class AdmissionGate:
    """Inference requests pass ``Admission`` before their body is read; others (health, metrics, feedback)
    are never held back by inference load."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        template = inference_route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if template is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.admission.acquire(received_at())
        except Overloaded as refused:
            SHED.labels(reason=str(refused.details["reason"])).inc()
            scope["route"] = _ROUTES[template]  # counted and logged under its route, not as unmatched
            await send_error(scope, receive, send, refused)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.release()
