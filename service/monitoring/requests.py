"""Request count and latency per route template, as a pure ASGI middleware (no per-path cardinality).

Every label value is bounded whatever clients send: the route is the matched template (or ``unmatched``),
the method one of the standard ones (or ``other``: HTTP lets a client invent methods, and 500 made-up
4 KB method names once minted 500 series, +47 MB of memory and an 82 MB /metrics), the status a code.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.monitoring.prometheus import LATENCY, REQUESTS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # labels() takes a lock and builds a key per call; the children are few (routes x methods x
        # statuses), so keep them: a dict lookup per request instead.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_template(scope)
            method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
            key = (route, method, str(status))
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = REQUESTS.labels(route=route, method=key[1], status=key[2])
            counter.inc()
            histogram = self._histograms.get(route)
            if histogram is None:
                histogram = self._histograms[route] = LATENCY.labels(route=route)
            histogram.observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (set on the scope by the router), never the raw path."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched")) if route is not None else "unmatched"
