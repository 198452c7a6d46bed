"""Request guards that must act before the body is parsed: media type (415) and body size (413).

A pure ASGI middleware, so an oversized body is refused from its Content-Length, or cut off while it
streams in, without ever being read into memory whole.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge

V2_PREFIX = "/v2"


def is_v2(path: str) -> bool:
    """Paths of the Open Inference Protocol, which answer errors in its own shape."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


_GUARDED_HEADERS = {b"content-length", b"content-type", b"transfer-encoding"}
_BODY_METHODS = {b"POST", b"PUT", b"PATCH", "POST", "PUT", "PATCH"}


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-stream. An HTTPException, because FastAPI re-raises those from body
    parsing (anything else becomes a generic 400) and the app's handler turns it into our 413 shape."""

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(413, too_large_message(limit))
        self.limit = limit
        self.received = received

    def as_service_error(self) -> PayloadTooLarge:
        return PayloadTooLarge(self.detail, {"limit_bytes": self.limit, "received_at_least": self.received})


def too_large_message(limit: int) -> str:
    return f"request body exceeds {limit} bytes (CALIBSERVE_MAX_BODY_BYTES)"


async def _send_error(
    send: Send, status: int, kind: str, message: str, details: dict[str, Any], path: str = ""
) -> None:
    if is_v2(path):
        body = json.dumps({"error": message}).encode()
    else:
        body = json.dumps({"error": {"type": kind, "message": message, "details": details}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(content_type: str) -> bool:
    media = _media(content_type)
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


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
            await _send_error(
                send,
                415,
                "unsupported_media_type",
                f"request body must be JSON (Content-Type: application/json{self._accepted_media(scope['path'])}), "
                f"got {content_type or 'no Content-Type'}",
                {"field": "content-type"},
            )
            return
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send, int(length), scope["path"])
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes, received)
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
                await self._too_large(send, received, scope["path"])

    async def _too_large(self, send: Send, size: int, path: str) -> None:
        await _send_error(
            send,
            413,
            "payload_too_large",
            too_large_message(self.max_body_bytes),
            {"limit_bytes": self.max_body_bytes, "received_at_least": size},
            path,
        )
