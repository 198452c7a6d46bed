"""A bound on open connections per worker, enforced the moment a connection is accepted.

uvicorn's ``limit_concurrency`` answers 503 only once a request arrives, so connections that never send
one (or send headers a byte at a time) keep their file descriptor forever: 20,200 such connections used up
a 20,000 file limit, every later request timed out, and the accept loop logged 210,943 "Too many open
files" tracebacks in 15 s. ``CappedHTTPProtocol`` is uvicorn's own HTTP protocol (httptools when installed,
else h11) that closes a connection beyond ``CALIBSERVE_MAX_CONNECTIONS`` at once, with a 503, so the
process never runs out of descriptors and keeps serving the connections it has. What it cannot do is time
out a client that holds a connection with partial headers: run behind a proxy or ingress for that (README).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from service.monitoring.prometheus import CONNECTIONS_REFUSED
from service.request_context import SCOPE_RECEIVED_AT

try:
    import httptools  # noqa: F401  (uvicorn's fast parser: the default install has it)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHTTPProtocol
except ImportError:  # pragma: no cover - a plain `uvicorn` install
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornHTTPProtocol  # type: ignore[assignment]

logger = logging.getLogger("calibserve.connections")

# Descriptors kept free for what is not a client connection: the listening socket, the prediction log,
# model files, pipes, log files.
RESERVED_DESCRIPTORS = 64
WARNING_INTERVAL_S = 10.0
_REFUSAL_BODY = (
    b'{"error": {"type": "too_many_connections", "message": "the server has too many open connections; '
    b'retry shortly (CALIBSERVE_MAX_CONNECTIONS)", "details": {}}}'
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)

_limit: int | None = None
_last_warning = 0.0


def raise_descriptor_limit() -> int:
    """The soft limit on open files raised to the hard one (as most servers do at start); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def configure(max_connections: int) -> int:
    """Set this process's cap (each worker builds its app and calls this); returns the cap in force, which
    is lowered to fit the file limit when the setting does not."""
    global _limit
    descriptors = raise_descriptor_limit()
    _limit = max(1, min(max_connections, descriptors - RESERVED_DESCRIPTORS))
    if _limit < max_connections:
        logger.warning(
            "CALIBSERVE_MAX_CONNECTIONS=%d does not fit the open-file limit (%d): capping connections at %d",
            max_connections,
            descriptors,
            _limit,
        )
    return _limit


class CappedHTTPProtocol(_UvicornHTTPProtocol):
    """uvicorn's HTTP protocol, refusing connections past the cap before they hold any state."""

    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if _limit is not None and len(self.server_state.connections) >= _limit:
            self._refused = True
            _refuse(transport)
            return
        super().connection_made(transport)

    def on_headers_complete(self) -> None:
        """Stamps the arrival time on the scope: under overload a request can wait longer for the event loop
        than in the inference queue, and the queue deadline must count both (service/request_context.py).
        The request's task is created here but runs later, so the stamp is there when it starts."""
        self.scope[SCOPE_RECEIVED_AT] = time.monotonic()  # type: ignore[literal-required]
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            super().connection_lost(exc)


def _refuse(transport: asyncio.Transport) -> None:
    global _last_warning
    CONNECTIONS_REFUSED.inc()
    now = time.monotonic()
    if now - _last_warning >= WARNING_INTERVAL_S:  # one line per interval, never one per connection
        _last_warning = now
        logger.warning("open connections reached CALIBSERVE_MAX_CONNECTIONS=%s: refusing new ones", _limit)
    try:
        transport.write(_REFUSAL)
    finally:
        transport.close()
