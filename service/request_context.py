"""What is known about the request being answered, for code that must not take it as an argument.

Set by the API's outermost middleware for the duration of one request (``contextvars``: each request's
task has its own). ``REQUEST_ID`` stamps log records; ``RECEIVED_AT`` is when the server parsed the
request line (``time.monotonic()``), so the inference queue's deadline counts the time a request spent
waiting for the event loop too, not only the time it spent in the queue: under overload most of the wait
is there. Free of any framework, so domain modules may read it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("calibserve_request_id", default=None)
RECEIVED_AT: ContextVar[float | None] = ContextVar("calibserve_received_at", default=None)
SCOPE_RECEIVED_AT = "calibserve.received_at"  # the ASGI scope key the HTTP protocol stamps


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def received_at() -> float:
    """When the current request arrived, or now outside a request."""
    stamp = RECEIVED_AT.get()
    return time.monotonic() if stamp is None else stamp


# (name, card version's first 12 hex digits) of the model version answering this request, for the access log.
SERVED_MODEL: ContextVar[tuple[str, str] | None] = ContextVar("calibserve_served_model", default=None)
