"""Peer 1, the ceiling: a bare ASGI callable that drains the request body and returns a constant JSON.

    uvicorn --app-dir bench/peers bare_asgi:app --workers N

No framework, no validation, no model: what uvicorn itself costs per request on this machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"predictions":[{"label":"0","confidence":1.0}]}'
READY = b'{"status":"ready"}'


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as any real endpoint must
        message = await receive()
        more = message.get("more_body", False)
    body = READY if scope["path"] == "/health/ready" else BODY
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
